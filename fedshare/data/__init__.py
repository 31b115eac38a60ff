"""Data: interactions, dataset readers, the datasets, sharing (local/shared splits)."""
