"""ensemble_nn's fused CPU kernel (nn_kernel.c), built at install as optional extensions
(setup.py: one per instruction set) and loaded here with ctypes. No torch here: the driver
asks `available()` to name the backend in a fit's key without importing the trainer.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import cache

# variant module -> CPU flags it needs (Linux /proc/cpuinfo names), widest first
VARIANTS = {"_nn_avx512": ("avx512f", "avx2", "fma"), "_nn_avx2": ("avx2", "fma")}

_P = ctypes.c_void_p
_SIGNATURES = {
    "nn_train": [_P, _P, _P, ctypes.c_int, _P, _P, ctypes.c_int64, _P, _P, _P, _P, _P] + [_P] * 4,
    "nn_validate": [_P, _P, ctypes.c_int, _P, _P, ctypes.c_int64, _P, _P] + [_P] * 5,
}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def variant_path(name: str) -> str | None:
    """The built shared object of variant `name`, or None where it was not built."""
    spec = importlib.util.find_spec(f"pipeline.models.solvers.native.{name}")
    return spec.origin if spec is not None and spec.origin else None


@cache
def load(name: str | None = None) -> ctypes.CDLL | None:
    """Variant `name`, or the widest this CPU runs (None: no usable variant was built).

    QPIPE_NN_NATIVE=0 in the environment turns the kernel off (the torch path runs)."""
    if name is None:
        if os.environ.get("QPIPE_NN_NATIVE", "1") == "0":
            return None
        flags = _cpu_flags()
        for cand, needs in VARIANTS.items():
            if set(needs) <= flags and (lib := load(cand)) is not None:
                return lib
        return None
    path = variant_path(name)
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    for fn, args in _SIGNATURES.items():
        getattr(lib, fn).argtypes = args
        getattr(lib, fn).restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether a variant of the kernel is built and runs on this CPU."""
    return load() is not None
