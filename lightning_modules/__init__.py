"""LightningModules: one epoch is one federated round (or one centralized epoch)."""

from lightning_modules.fedmf import FedMFModule
from lightning_modules.fedshare import FedShareModule
from lightning_modules.lightgcn import LightGCNModule
from lightning_modules.popularity import PopularityModule

__all__ = ["FedMFModule", "FedShareModule", "LightGCNModule", "PopularityModule"]
