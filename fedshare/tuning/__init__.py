"""Hyperparameter search on validation (`python -m fedshare.tune`: `search`) and the results
campaign's equal-budget searches (`campaign`)."""
