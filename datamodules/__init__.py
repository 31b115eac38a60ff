"""LightningDataModules: load, split once, partition each user's data into local and shared."""

from datamodules.federated import FederatedDataModule

__all__ = ["FederatedDataModule"]
