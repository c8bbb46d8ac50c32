"""Quantile forecasting models, in three parts (docs/ARCHITECTURE.md):

- the public scikit-learn estimators: `estimators.py` (ARQR, LQR, RandomWalk, Climatology) and
  `estimator_nn.py` (EnsembleNN), exported as `pipeline.ARQR` and so on;
- `solvers/`: the private batched numerical kernels they and the runtime share (plain
  parameters, numpy/torch only) and the parameter rules every layer checks;
- `plugins/`: how the runner drives a model (registry, Adapter spec, user models by
  `_target_`, the built-in models' config classes and adapters), the only part that knows the
  study's config.
"""
