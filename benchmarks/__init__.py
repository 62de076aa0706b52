"""Benchmarks of the VAE anomaly detector against baselines (run ``python -m benchmarks.tabular``)."""
