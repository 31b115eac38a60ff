"""FedShare as a LightningModule: one epoch is one federated round (DESIGN.md section 2).

A round: users whose sharing starts now upload ``S_u`` (edges enter the server graph and its
edge log) -> the server configures the round (cohort, ``Q``, views) -> the cohort's local
epochs (BPR + alignment) -> FedAvg of item rows -> the server's graph step. The graph's Adam
optimizer is the module's optimizer, so Lightning checkpoints its state; the graph's edges
and edge log, the round generators and the validation history go into the checkpoint too,
so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedshare.federated.fedshare import GraphServer, make_clients, round_logs
from fedshare.graph.lightgcn import adam
from fedshare.seeding import torch_generator
from lightning_modules.fedmf import FedMFModule
from lightning_modules.ranking import RankingModule


class FedShareModule(FedMFModule):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,  # the rest from the config (configs/model/fedshare.yaml, fed.*, seed, eval.ks): no defaults here
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
        lambda_cl: float,
        tau: float,
        beta: float,
        beta_select: bool,
        beta_grid: list[float],
        beta_holdout: float,
        use_graph: bool,
        layers: int,
        server_steps: int,
        server_batch: int,
        server_graph_lr: float,
        server_reg: float,
        q_align_lr: float,
        align_items: int,
        cl_negatives: int,
        negatives_group: int,
        share_weighted: bool,
        lambda_item: float | None,
        align_graph: bool,
        nodes: int,
    ) -> None:
        # FedMF's clients and server are built, then replaced by their FedShare extensions
        super().__init__(
            n_users,
            n_items,
            dim=dim,
            init_std=init_std,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            reg=reg,
            server_lr=server_lr,
            cohort_fraction=cohort_fraction,
            seed=seed,
            ks=ks,
            nodes=nodes,
        )
        self.save_hyperparameters()
        self.beta = beta
        init = torch_generator(seed, "init")  # drawn in FedMF's order: no sharing gives FedMF exactly
        self.clients = make_clients(
            n_users,
            init,
            seed,
            nodes,
            dim=dim,
            init_std=init_std,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            reg=reg,
            lambda_cl=lambda_cl,
            tau=tau,
            share_weighted=share_weighted,
            beta_select=beta_select,
            beta_grid=beta_grid,
            beta_holdout=beta_holdout,
        )
        self.server = GraphServer(
            n_users,
            n_items,
            dim,
            init,
            init_std,
            server_lr,
            cohort_fraction,
            seed,
            layers=layers,
            use_graph=use_graph,
            steps=server_steps,
            batch_size=server_batch,
            reg=server_reg,
            lambda_cl=0.0 if lambda_cl == 0 else (lambda_cl if lambda_item is None else lambda_item),
            tau=tau,
            q_align_lr=q_align_lr,
            align_items=align_items,
            cl_negatives=cl_negatives,
            negatives_group=negatives_group,
            align_graph=align_graph,
        )

    def attach_data(self, dm) -> None:
        RankingModule.attach_data(self, dm)  # FedMF's would hand the clients D_u only
        self.clients.attach_data(dm.train, dm.shared, dm.share_start)

    def configure_optimizers(self):
        return adam([self.server.user0, self.server.item0], self.hparams.server_graph_lr)

    def training_step(self, batch: object, batch_idx: int) -> None:
        logs = self.run_round(self.current_epoch + 1, self.optimizers().optimizer)
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=1)

    def run_round(self, round_: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One federated round (also called by the benchmark, without a Trainer)."""
        t0 = time.perf_counter()
        self.server.receive_shares(*self.clients.shares_starting(round_), round_)
        cohort, item_table, views = self.server.configure_round()
        upload, sums = self.clients.fit_sums(cohort, item_table, views)
        t1 = time.perf_counter()
        self.server.aggregate(upload)
        server_losses = self.server.graph_step(optimizer)
        t2 = time.perf_counter()
        return round_logs(self, sums, cohort, views, server_losses, t1 - t0, t2 - t1)

    def score_users(self, users: Tensor) -> Tensor:
        return self.clients.score(users, self.server.item_emb, self.server.views(users, pool=False), self.beta)

    def server_state(self) -> dict[str, Tensor]:
        return self.server.state()

    def snapshot_tensors(self) -> dict[str, Tensor]:
        """What an unlearning snapshot keeps (DESIGN.md section 3): the graph's layer-0 tables
        and ``Q`` (the alignment ties it to them); no gradients, no client data, no edges. The
        one edge log (which edge entered at which round) is the graph's own: a copy in every
        snapshot would double the store and hold revoked pairs wherever a snapshot travels
        (a W&B artifact, say)."""
        return {
            "user0": self.server.user0.detach().cpu(),
            "item0": self.server.item0.detach().cpu(),
            "item_emb": self.server.item_emb.detach().cpu(),
        }

    def unshare(self, users: Tensor, items: Tensor, refresh: bool = True) -> int:
        """Deletes the pairs from every server store (graph, edge log, views) and from the
        clients' shared part; the clients keep them as local data. Returns pairs removed.
        ``refresh=False`` leaves the views stale (a caller deleting many requests in a row
        refreshes once at the end)."""
        removed = self.server.remove_shares(users, items)
        self.clients.unshare(users, items)
        if refresh:
            self.server.refresh_views()
        return removed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["server_graph"] = {k: v.cpu() for k, v in self.server.graph.state().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "server_graph" in checkpoint:
            self.server.load_graph_state(checkpoint["server_graph"])
