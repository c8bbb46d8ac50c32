"""Allowed values and library defaults of the built-in models' parameters, declared once.

The rules are read by the config classes in `pipeline.models.plugins.builtin` (validation
names `models.<m>.<key>`) and by the kernels (`ARQR`, `LQR`, the ensemble trainer), which name
the bare parameter: one declaration, two checks, the same `allowed` text.

The defaults are those of the kernels' and the public estimators' keyword arguments (both read
them from here). A study's defaults are `conf/models/<name>/default.yaml` (the config's one
source); tests/test_registry.py holds the two equal.

Imports: solvers.rules only.
"""

from __future__ import annotations

from pipeline.models.solvers.rules import Rule, integer_rule, number_rule

QUANTILES = (0.1, 0.5, 0.9)  # the seed's levels

# ar_qr (pipeline.models.solvers.ar_qr)
P = integer_rule(1, "an integer autoregressive order p >= 1")
AR_QR_DEFAULTS = {"p": 12}

# lqr (pipeline.models.solvers.lqr)
SOLVERS = ("huberized", "exact")
ALPHAS = number_rule(lambda a: a >= 0, "a penalty >= 0", each=True, non_empty=True)
SOLVER = Rule(lambda v: v in SOLVERS, f"one of {list(SOLVERS)}")
RFF_FEATURES = integer_rule(0, "an integer >= 0 (0 = linear)")
BANDWIDTH = number_rule(lambda v: v > 0, "a positive number")
VALIDATION_SIZE = integer_rule(1, "an integer >= 1 (months)")
LQR_DEFAULTS = {
    "alphas": (7.5, 10, 15, 20, 25, 30, 35),
    "solver": "huberized",
    "rff_features": 1000,
    "rff_bandwidth": "median",  # the config's `auto`
    "validation_size": 12,
    "penalize_first_lag": True,
    "seed": 0,
}
# fits per batched lqr call (and per task): the active-set iterations cost about the same for
# 30 fits as for 128, so a call should hold many (peak ~200 MiB above a worker's at 128)
LQR_BATCH = 128

# ensemble_nn (pipeline.models.solvers._nn_data)
UNITS = integer_rule(1, "an integer width >= 1", each=True, non_empty=True)
LEARNING_RATE = number_rule(lambda v: v > 0, "a finite learning rate > 0")
EPOCHS = integer_rule(1, "an integer >= 1 (epochs)")
BATCH_SIZE = integer_rule(1, "an integer batch size >= 1")
PATIENCE = integer_rule(1, "an integer patience >= 1 epoch")
# an upper bound: a typo such as 100000 would otherwise allocate until the worker is killed
PARALLEL_MODELS = integer_rule(1, "an integer from 1 to 1000 (ensemble members)", maximum=1000)
BLOCK_ORIGINS = integer_rule(1, "an integer >= 1 (origins trained as one batched network)")
NN_DEFAULTS = {
    "units_per_layer": (32, 32, 32, 32, 32),
    "learning_rate": 5e-5,
    "epochs": 1500,
    "batch_size": 32,
    "patience": 50,
    "parallel_models": 10,
    "seed": 0,
    "device": "auto",
    "scale": "per_country",
    "validation_fraction": 0.2,
}
