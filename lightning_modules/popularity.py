"""Popularity baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.ranking import RankingModule


class PopularityModule(RankingModule):
    """Counts training interactions of every item (all of ``D_u``: a reference, not private)."""

    def __init__(self, n_items: int, *, ks: Sequence[int]) -> None:  # ks: eval.ks
        super().__init__(ks)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.register_buffer("item_count", torch.zeros(n_items))

    def training_step(self, batch: object, batch_idx: int) -> None:
        self.item_count.zero_().index_add_(
            0, self.train_items, torch.ones_like(self.train_items, dtype=self.item_count.dtype)
        )

    def score_users(self, users: Tensor) -> Tensor:
        return self.item_count.unsqueeze(0).expand(users.numel(), -1).clone()
