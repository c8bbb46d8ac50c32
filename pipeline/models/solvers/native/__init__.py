"""ensemble_nn's fused CPU kernel (nn_kernel.c), built at install as optional extensions
(setup.py) and loaded with ctypes by pipeline.models.solvers._nn_native."""
