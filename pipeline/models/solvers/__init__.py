"""Private numerical solvers (plain parameters, numpy/torch only): the batched kernels the
runtime runs, and the parameter rules every layer checks (rules.py, parameters.py)."""
