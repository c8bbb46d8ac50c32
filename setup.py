"""Optional native extension: ensemble_nn's fused CPU kernel (pipeline/models/solvers/native).

Built twice from one C source, AVX-512 and AVX2 + FMA, never for the build machine's own CPU
(-march=native would not run on other workers); the trainer picks a variant at load time by
the CPU's flags. `optional=True`: without a C compiler, or on another ISA, the install goes
on and ensemble_nn trains with torch. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

NATIVE = "pipeline/models/solvers/native"
# -ffp-contract=off: only the kernel's explicit FMAs fuse, so both variants round alike
COMMON = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"]
# each variant's own source (a #define and an #include of nn_kernel.c), so its own object
VARIANTS = {"avx512": ["-mavx512f", "-mavx2", "-mfma"], "avx2": ["-mavx2", "-mfma"]}

setup(
    ext_modules=[
        Extension(
            f"pipeline.models.solvers.native._nn_{name}",
            sources=[f"{NATIVE}/nn_{name}.c"],
            depends=[f"{NATIVE}/nn_kernel.c", f"{NATIVE}/nn_simd.h"],
            extra_compile_args=COMMON + flags,
            libraries=["m"],
            optional=True,
        )
        for name, flags in VARIANTS.items()
    ]
)
