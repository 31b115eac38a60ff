"""Evaluation: full-ranking math and the torchmetrics Metric."""
