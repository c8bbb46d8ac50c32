"""Quantile forecasting models (pure numpy/torch): estimators and batched solver cores."""
