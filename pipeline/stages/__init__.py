"""Thin stages: read inputs, call the pure core, write outputs atomically."""
