"""Evaluation layer: metrics, metrics bundles, charts, the HTML report and the results page."""
