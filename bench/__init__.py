"""Benchmarks: python -m bench.serving."""
