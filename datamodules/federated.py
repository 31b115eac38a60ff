"""The federated data module: one dataset, split once, partitioned per user into local and shared.

What lives where (DESIGN.md section 1):

- ``train``: ``D_u``, each user's training interactions, held on the user's device;
- ``shared`` / ``local``: the partition of ``D_u`` into ``S_u`` (sent to the server) and ``L_u``;
- ``shared_edges``: ``(user, item)`` of every shared interaction: all the server may see;
- ``share_start``: the round at which each user starts sharing (-1: never);
- ``valid`` / ``test``: held-out interactions, never shared, used for evaluation only.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fedshare.data.datasets import locate_files
from fedshare.data.interactions import InteractionData, UserCSR
from fedshare.data.sharing import partition, ratio_histogram, sharing_summary

log = logging.getLogger(__name__)


class FederatedDataModule(pl.LightningDataModule):
    """Per-user local/shared training splits and evaluation batches of users.

    ``train_dataloader`` yields one item per epoch: a Lightning epoch is one federated round,
    and the round itself samples its cohort. Evaluation dataloaders yield batches of user ids
    (users with at least one held-out item).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.data: InteractionData | None = None

    def prepare_data(self) -> None:
        # only fetches (download or a clear error on missing files); splitting happens in setup
        if self.cfg.data.format != "synthetic":
            locate_files(self.cfg.data, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:  # split once, whatever the stage
            return
        parts = partition(self.cfg)  # train, valid, test, shared, local, share_* and group_names
        for field in dataclasses.fields(parts):
            setattr(self, field.name, getattr(parts, field.name))
        data = parts.data
        log.info(data.summary())
        log.info(
            "sharing: %s",
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.summary().items()
            ),
        )
        log.info("sharing ratio histogram:\n%s", ratio_histogram(self.share_ratio))

    # ---- what the rest of the platform reads -------------------------------------------------
    @property
    def n_users(self) -> int:
        return self._loaded().n_users

    @property
    def n_items(self) -> int:
        return self._loaded().n_items

    @property
    def shared_edges(self) -> np.ndarray:
        """``[S, 2]`` (user, item) pairs of the shared interactions: the server's whole view."""
        return np.stack([self.shared.users, self.shared.items], axis=1)

    def revoked(self, users: np.ndarray, items: np.ndarray) -> FederatedDataModule:
        """A copy in which the given shared pairs are local again (the data of `retrain`).

        Everything else is the same objects: the splits, who shares, the groups (evaluation
        groups stay those of the learned run). A pair that is not shared raises ``ValueError``.
        """
        keys = self.train.users * self.n_items + self.train.items
        revoked = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        hit = np.isin(keys, revoked) & self.shared_mask
        if int(hit.sum()) != np.unique(revoked).size:
            raise ValueError("some revoked pairs are not shared interactions of this data module")
        out = copy.copy(self)
        out.shared_mask = self.shared_mask & ~hit
        out.shared = self.train.select(out.shared_mask)
        out.local = self.train.select(~out.shared_mask)
        return out

    def summary(self) -> dict[str, Any]:
        out = dict(sharing_summary(self.train, self.shared_mask))
        out["n_users_late"] = int((self.share_start > 1).sum())
        return out

    def _loaded(self) -> InteractionData:
        if self.data is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        return self.data

    # ---- dataloaders -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    def _user_batches(self, split: UserCSR) -> DataLoader:
        users = np.flatnonzero(split.degrees > 0)
        size = int(self.cfg.eval.batch_users)
        batches: Sequence[torch.Tensor] = [
            torch.from_numpy(users[i : i + size]) for i in range(0, len(users), size)
        ]
        return DataLoader(batches, batch_size=None)

    @property
    def val_split(self) -> str:
        """What the validation loop evaluates: ``valid``, or ``test`` as a learning curve for data
        without a validation split when ``eval.curve`` is set (LightGCN's Gowalla protocol)."""
        return "test" if not self.valid.items.size and self.cfg.eval.curve else "valid"

    def val_dataloader(self) -> DataLoader:
        return self._user_batches(self.test if self.val_split == "test" else self.valid)

    def test_dataloader(self) -> DataLoader:
        return self._user_batches(self.test)
