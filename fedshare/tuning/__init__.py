"""Hyperparameter search on validation (`python -m fedshare.tune`)."""
