"""Benchmarks: speed and memory of rounds, evaluation, propagation and Flower (python -m fedshare.bench)."""
