"""Centralized LightGCN, the upper bound: every training interaction on the server.

One Lightning epoch is one pass over all training edges in minibatches (the LightGCN paper's
epoch), on the same `SharedGraph` the FedShare server uses, with Adam and the paper's loss.
Ranking uses the propagated tables, recomputed once before each evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fedshare.graph.lightgcn import EdgeSampler, adam, bpr_loss
from fedshare.graph.shared_graph import SharedGraph
from fedshare.seeding import torch_generator
from lightning_modules.ranking import RankingModule


class LightGCNModule(RankingModule):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,  # the rest from the config (configs/model/lightgcn.yaml, seed, eval.ks): no defaults here
        dim: int,
        layers: int,
        lr: float,
        reg: float,
        batch_size: int,
        init_std: float,
        seed: int,
        ks: Sequence[int],
    ) -> None:
        super().__init__(ks)
        self.save_hyperparameters()
        self.automatic_optimization = False
        init = torch_generator(seed, "graph-init")
        self.user0 = nn.Parameter(torch.randn(n_users, dim, generator=init) * init_std)
        self.item0 = nn.Parameter(torch.randn(n_items, dim, generator=init) * init_std)
        self.register_buffer("user_out", torch.zeros(n_users, dim), persistent=False)
        self.register_buffer("item_out", torch.zeros(n_items, dim), persistent=False)
        self.batch_gen = torch_generator(seed, "central-batches")
        self.graph: SharedGraph | None = None
        self.sampler: EdgeSampler | None = None

    def attach_data(self, dm) -> None:
        super().attach_data(dm)
        train = dm.train
        self.graph = SharedGraph(dm.n_users, dm.n_items)
        self.graph.add_edges(torch.from_numpy(train.users), torch.from_numpy(train.items), 1)
        self.sampler = EdgeSampler(self.graph)

    def configure_optimizers(self):
        return adam(self.parameters(), self.hparams.lr)

    def _graph(self) -> SharedGraph:
        if self.graph.device != self.device:
            self.graph = self.graph.to(self.device)
        return self.graph

    def training_step(self, batch: object, batch_idx: int) -> None:
        opt = self.optimizers().optimizer
        t0 = time.perf_counter()
        total = torch.zeros(2, device=self.device)  # summed on the device: no sync per batch
        steps = 0
        layers, reg = self.hparams.layers, self.hparams.reg
        for users, pos, neg in self.sampler.epoch(self.hparams.batch_size, self.batch_gen, self.device):
            user_out, item_out = self._graph().propagate(self.user0, self.item0, layers)
            loss, l2 = bpr_loss(user_out, item_out, self.user0, self.item0, users, pos, neg, reg)
            opt.zero_grad(set_to_none=True)
            (loss + l2).backward()
            opt.step()
            total += torch.stack([loss.detach(), l2.detach()])
            steps += 1
            if self.trainer.fast_dev_run and steps >= 2:
                break
        total_bpr, total_l2 = (total / steps).tolist()
        logs = {
            "train/bpr": total_bpr,
            "train/reg": total_l2,
            "time/server_s": time.perf_counter() - t0,
        }
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=1)

    @torch.no_grad()
    def _refresh(self) -> None:
        user_out, item_out = self._graph().propagate(self.user0, self.item0, self.hparams.layers)
        self.user_out, self.item_out = user_out, item_out

    def on_validation_epoch_start(self) -> None:
        self._refresh()

    def on_test_epoch_start(self) -> None:
        self._refresh()

    def score_users(self, users: Tensor) -> Tensor:
        return self.user_out.index_select(0, users) @ self.item_out.T

    def server_state(self) -> dict[str, Tensor]:
        return {"user0": self.user0.detach(), "item0": self.item0.detach(), **self.graph.state()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generators"] = {"batches": self.batch_gen.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("generators", {}).get("batches")
        if state is not None:
            self.batch_gen.set_state(state)
