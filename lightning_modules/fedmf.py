"""FedMF as a LightningModule: one epoch is one federated round.

Clients are rows (`FedMFClients`: private user rows and each user's own data); the server
(`FedAvgServer`) holds the global item table. A round: the server configures it (samples a
cohort, sends the item table), every cohort client runs its local epochs at once, the server
averages the uploaded item-row changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fedshare.federated.fedmf import FedAvgServer, FedMFClients
from fedshare.seeding import torch_generator
from lightning_modules.ranking import RankingModule


class FedMFModule(RankingModule):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,  # the rest from the config (configs/model/fedmf.yaml, fed.*, seed, eval.ks): no defaults here
        dim: int,
        init_std: float,
        local_epochs: int,
        batch_size: int,
        lr: float,
        reg: float,
        server_lr: float,
        cohort_fraction: float,
        seed: int,
        ks: Sequence[int],
        nodes: int,
    ) -> None:
        super().__init__(ks)
        self.save_hyperparameters()
        self.automatic_optimization = False
        init = torch_generator(seed, "init")
        self.clients = FedMFClients(
            n_users, dim, init, init_std, local_epochs, batch_size, lr, reg, seed, nodes=nodes
        )
        self.server = FedAvgServer(n_users, n_items, dim, init, init_std, server_lr, cohort_fraction, seed)

    def attach_data(self, dm) -> None:
        super().attach_data(dm)
        self.clients.attach_data(dm.train)

    def training_step(self, batch: object, batch_idx: int) -> None:
        t0 = time.perf_counter()
        cohort, item_table = self.server.configure_round()
        upload, loss = self.clients.fit(cohort, item_table)
        t1 = time.perf_counter()
        self.server.aggregate(upload)
        t2 = time.perf_counter()
        self.log_dict(
            {
                "train/loss": float(loss),
                "time/client_s": t1 - t0,
                "time/server_s": t2 - t1,
                "train/cohort": float(cohort.numel()),
            },
            on_step=False,
            on_epoch=True,
            batch_size=1,
        )

    def score_users(self, users: Tensor) -> Tensor:
        return self.clients.score(users, self.server.item_emb)

    def server_state(self) -> dict[str, Tensor]:
        return self.server.state()

    # the round generators are part of the state: a resumed run draws what it would have
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generators"] = {
            "server": self.server.generator_states(),
            "clients": self.clients.generator_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        states = checkpoint.get("generators", {})
        self.server.load_generator_states(states.get("server", {}))
        self.clients.load_generator_states(states.get("clients", {}))
