"""Override lists the benchmark scripts share (imported as a sibling module: run them as
`python benchmarks/<script>.py` from the repository root)."""

from __future__ import annotations

from pipeline.models.plugins.registry import only

# the seed study with ar_qr alone: no other model, no combination
AR_QR_ONLY = ["experiment=seed", *only("ar_qr"), "evaluation.combo.enabled=false"]
QUIET = ["runtime.progress_bar=false", "runtime.dashboard_port=0"]
