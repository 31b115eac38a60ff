"""LightningModules: one epoch is one federated round."""

from lightning_modules.fedmf import FedMFModule
from lightning_modules.popularity import PopularityModule

__all__ = ["FedMFModule", "PopularityModule"]
