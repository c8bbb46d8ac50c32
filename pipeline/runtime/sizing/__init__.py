"""Sizing a run: the cluster plan from the probe's measurements, usable cores and memory, the probe cache, task timeouts."""
