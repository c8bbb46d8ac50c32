"""The built-in models: one module each, found by the registry (pipeline.models.plugins.registry).

Each module defines `CONFIG` (the dataclass of `models.<name>`: its parameters and their
allowed ranges; the defaults live in `conf/models/<name>/default.yaml`) and `ADAPTER` (how the
runtime drives it). The numerical kernels of the three shipped models live beside them in
`pipeline/models/` and are imported only inside `fit_batch`, so validating a config never
imports torch.
"""
