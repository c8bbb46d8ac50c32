"""Override lists the benchmark scripts share (imported as a sibling module: run them as
`python benchmarks/<script>.py` from the repository root)."""

from __future__ import annotations

# the seed study with ar_qr alone: no other model, no combination
AR_QR_ONLY = [
    "experiment=seed",
    "models.lqr.enabled=false",
    "models.ensemble_nn.enabled=false",
    "models.rw.enabled=false",
    "models.climatology.enabled=false",
    "evaluation.combo.enabled=false",
]
QUIET = ["runtime.progress_bar=false", "runtime.dashboard_port=0"]
