"""Quantile forecasting backtests: Hydra config, DVC stages, a Dask runtime."""

__version__ = "0.1.0"
