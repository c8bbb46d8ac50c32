"""Override lists the benchmark scripts share (imported as a sibling module: run them as
`python benchmarks/<script>.py` from the repository root)."""

from __future__ import annotations

# The built-in models in table order: pipeline's registry.builtin_names(), spelled out because
# these scripts import no pipeline code (they run a baseline checkout in child processes).
# tests/test_one_source_studies.py fails when a model is added to the registry and not here.
BUILTIN_MODELS = ("ar_qr", "lqr", "ensemble_nn", "rw", "climatology")


def only(*names: str) -> list[str]:
    """Overrides that enable exactly `names` among the built-in models (pipeline's
    registry.only): a study names the models it keeps, so a new built-in model, enabled by
    default, does not join it unseen."""
    unknown = sorted(set(names) - set(BUILTIN_MODELS))
    if unknown:
        raise ValueError(f"not built-in models: {unknown} (known: {list(BUILTIN_MODELS)})")
    return [f"models.{m}.enabled={'true' if m in names else 'false'}" for m in BUILTIN_MODELS]


# the seed study with ar_qr alone: no other model, no combination
AR_QR_ONLY = ["experiment=seed", *only("ar_qr"), "evaluation.combo.enabled=false"]
QUIET = ["runtime.progress_bar=false", "runtime.dashboard_port=0"]
