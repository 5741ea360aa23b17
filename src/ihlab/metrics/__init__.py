"""Measurements: per-head scores from attention patterns and weights, loss profiles, and training
dynamics (learning time, phase changes, loss PCA)."""
