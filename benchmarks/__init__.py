"""Benchmarks: framing micro-benchmarks and the load generator, ``python -m benchmarks.load``."""
