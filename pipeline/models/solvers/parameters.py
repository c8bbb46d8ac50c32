"""Allowed values of the built-in models' parameters, declared once.

Read by the config classes in `pipeline.models.plugins.builtin` (validation names `models.<m>.<key>`)
and by the kernels (`ARQR`, `LQR`, the ensemble trainer), which name the bare parameter: one
declaration, two checks, the same `allowed` text.
"""

from __future__ import annotations

from pipeline.models.solvers.rules import Rule, integer_rule, number_rule

# ar_qr (pipeline.models.solvers.ar_qr)
P = integer_rule(1, "an integer autoregressive order p >= 1")

# lqr (pipeline.models.solvers.lqr)
SOLVERS = ("huberized", "exact")
ALPHAS = number_rule(lambda a: a >= 0, "a penalty >= 0", each=True, non_empty=True)
SOLVER = Rule(lambda v: v in SOLVERS, f"one of {list(SOLVERS)}")
RFF_FEATURES = integer_rule(0, "an integer >= 0 (0 = linear)")
BANDWIDTH = number_rule(lambda v: v > 0, "a positive number")
VALIDATION_SIZE = integer_rule(1, "an integer >= 1 (months)")

# ensemble_nn (pipeline.models.solvers._nn_data)
UNITS = integer_rule(1, "an integer width >= 1", each=True, non_empty=True)
LEARNING_RATE = number_rule(lambda v: v > 0, "a finite learning rate > 0")
EPOCHS = integer_rule(1, "an integer >= 1 (epochs)")
BATCH_SIZE = integer_rule(1, "an integer batch size >= 1")
PATIENCE = integer_rule(1, "an integer patience >= 1 epoch")
# an upper bound: a typo such as 100000 would otherwise allocate until the worker is killed
PARALLEL_MODELS = integer_rule(1, "an integer from 1 to 1000 (ensemble members)", maximum=1000)
BLOCK_ORIGINS = integer_rule(1, "an integer >= 1 (origins trained as one batched network)")
