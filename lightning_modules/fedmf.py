"""FedMF as a LightningModule: one epoch is one federated round.

Clients are rows: ``user_emb[u]`` is client u's private vector (it never leaves the device in a
real deployment), ``item_emb`` is the server's global item table ``Q``. A round: the server
samples a cohort, every cohort client runs its local epochs at once (`client_round`), the
server averages the uploaded item-row changes (`fedavg_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedshare.federation import client_round, cohort_data, fedavg_rows, plan_round, sample_cohort
from fedshare.seeding import torch_generator
from lightning_modules.ranking import RankingModule


class FedMFModule(RankingModule):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        init_std: float = 0.1,
        local_epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.1,
        reg: float = 1e-4,
        server_lr: float = 1.0,
        cohort_fraction: float = 1.0,
        seed: int = 0,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(ks)
        self.save_hyperparameters()
        self.automatic_optimization = False
        init = torch_generator(seed, "init")
        self.register_buffer("user_emb", torch.randn(n_users, dim, generator=init) * init_std)
        self.register_buffer("item_emb", torch.randn(n_items, dim, generator=init) * init_std)
        self.cohort_gen = torch_generator(seed, "cohort")
        self.round_gen = torch_generator(seed, "round")

    # ---- one round ----------------------------------------------------------------------------
    def training_step(self, batch: object, batch_idx: int) -> None:
        hp = self.hparams
        t0 = time.perf_counter()
        users = sample_cohort(hp.n_users, hp.cohort_fraction, self.cohort_gen).to(self.device)
        data = cohort_data(users, self.train_indptr, self.train_items)
        plan = plan_round(data, hp.n_items, hp.local_epochs, self.round_gen)
        new_rows, upload, loss = client_round(
            self.user_emb[users], self.item_emb, data, plan, hp.lr, hp.reg, hp.batch_size
        )
        self.user_emb[users] = new_rows  # private rows stay with their clients
        t1 = time.perf_counter()
        self.item_emb.copy_(fedavg_rows(self.item_emb, upload, hp.server_lr))
        t2 = time.perf_counter()
        self.log_dict(
            {
                "train/loss": float(loss),
                "time/client_s": t1 - t0,
                "time/server_s": t2 - t1,
                "train/cohort": float(users.numel()),
            },
            on_step=False,
            on_epoch=True,
            batch_size=1,
        )

    def server_state(self) -> dict[str, Tensor]:
        """Everything the server holds: the global item table (uploads are consumed each round)."""
        return {"item_emb": self.item_emb}

    def score_users(self, users: Tensor) -> Tensor:
        return self.user_emb[users] @ self.item_emb.T

    # ---- the round generators are part of the state: a resumed run draws what it would have --
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["generators"] = {
            "cohort": self.cohort_gen.get_state(),
            "round": self.round_gen.get_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("generators", {})
        if "cohort" in states:
            self.cohort_gen.set_state(states["cohort"])
        if "round" in states:
            self.round_gen.set_state(states["round"])
