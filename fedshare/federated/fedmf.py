"""FedMF's two sides as modules, so the protocol boundary is in the types.

- `FedMFClients`: the client population as rows: each user's private row ``p_u`` and each
  user's own training interactions. It trains the cohort it is told to, against the item table
  it is sent, and returns an `Upload`.
- `FedAvgServer`: the global item table ``Q`` and the cohort sampler; it sees uploads only.

Both are ``nn.Module``s so their state moves with the LightningModule (device, checkpoint).
The round follows Flower's shape: ``configure_round`` -> clients ``fit`` -> ``aggregate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedshare.data.interactions import UserCSR
from fedshare.federated.rounds import (
    Upload,
    client_round,
    cohort_data,
    fedavg_rows,
    plan_round,
    sample_cohort,
)
from fedshare.seeding import torch_generator


def shard_of(users: Tensor, nodes: int) -> Tensor:
    """The node hosting each user: ``user % nodes`` (``fed.nodes``; a Flower SuperNode's
    ``shard`` in its node config)."""
    return torch.remainder(users, nodes)


def round_purpose(node: int) -> str:
    """The seeding purpose of node ``node``'s draws; node 0's is the one-node stream, so a
    run with ``fed.nodes=1`` draws what it always drew."""
    return "round" if node == 0 else f"round/{node}"


class FedMFClients(nn.Module):
    def __init__(
        self,
        n_users: int,
        dim: int,
        init: torch.Generator,
        init_std: float,
        local_epochs: int,
        batch_size: int,
        lr: float,
        reg: float,
        seed: int,
        nodes: int,
    ) -> None:
        super().__init__()
        self.local_epochs, self.batch_size, self.lr, self.reg = local_epochs, batch_size, lr, reg
        self.seed = int(seed)
        self.register_buffer("user_emb", torch.randn(n_users, dim, generator=init) * init_std)
        self.register_buffer("train_indptr", torch.zeros(n_users + 1, dtype=torch.long), persistent=False)
        self.register_buffer("train_items", torch.zeros(0, dtype=torch.long), persistent=False)
        if nodes < 1:
            raise ValueError(f"fed.nodes must be >= 1, got {nodes}")
        self.nodes = int(nodes)
        # shuffles and negatives are drawn on the devices: one stream per node (see `shard_of`)
        self.round_gens = [torch_generator(seed, round_purpose(k)) for k in range(self.nodes)]
        # optional ``(cohort, weights) -> on_changes`` hook factory (see `client_round`): set by
        # the unlearning baselines' recorders (fedshare.unlearning.history.RoundChanges) while they record
        self.change_recorder: Any = None

    def attach_data(self, train: UserCSR) -> None:
        """Every client's own training interactions ``D_u`` (local and shared alike)."""
        device = self.user_emb.device
        self.train_indptr = torch.from_numpy(np.ascontiguousarray(train.indptr)).to(device)
        self.train_items = torch.from_numpy(np.ascontiguousarray(train.items)).to(device)
        self.n_items = train.n_items

    @property
    def round_gen(self) -> torch.Generator:
        """Node 0's stream (the only one when ``nodes == 1``)."""
        return self.round_gens[0]

    def fit(self, cohort: Tensor, item_table: Tensor) -> tuple[Upload, Tensor]:
        """The cohort's local epochs on its own data; private rows are updated in place."""
        upload, loss_sum, steps = self.fit_nodes(cohort, item_table)
        return upload, loss_sum / max(1, steps)

    def fit_nodes(self, cohort: Tensor, item_table: Tensor, aligner=None) -> tuple[Upload, Tensor, int]:
        """The cohort's round, node by node: each node's clients (``shard_of``) run their local
        epochs at once with that node's stream of draws, and the uploads add up, as on a
        deployment. Returns the summed upload, the summed loss of every client step and the
        number of client steps. ``aligner(part)`` gives the ``after_epoch`` of a node's part."""
        upload, loss_sum, steps = None, torch.zeros(()), 0
        shard = shard_of(cohort, self.nodes)
        for k in range(self.nodes):
            part = cohort if self.nodes == 1 else cohort[shard == k]
            if part.numel() == 0:
                continue
            after_epoch = aligner(part) if aligner is not None else None
            sent, loss, n_steps = self._local_round(part, item_table, self.round_gens[k], after_epoch)
            upload = sent if upload is None else upload + sent
            loss_sum, steps = loss_sum + loss.cpu() * n_steps, steps + n_steps
        if upload is None:
            upload = Upload(torch.zeros_like(item_table), item_table.new_zeros(item_table.shape[0]))
        return upload, loss_sum, steps

    def _local_round(
        self, cohort: Tensor, item_table: Tensor, generator: torch.Generator, after_epoch=None
    ) -> tuple[Upload, Tensor, int]:
        """`client_round` on the cohort's data (``after_epoch``: see there; the recorder's hook
        when one is installed); private rows are updated in place. Returns the upload, the
        mean loss per client step and the number of client steps."""
        data = cohort_data(cohort, self.train_indptr, self.train_items)
        plan = plan_round(data, self.n_items, self.local_epochs, generator)
        rows, upload, loss = client_round(
            self.user_emb[cohort],
            item_table,
            data,
            plan,
            self.lr,
            self.reg,
            self.batch_size,
            after_epoch=after_epoch,
            on_changes=self._change_hook(cohort, data),
        )
        self.user_emb[cohort] = rows
        degrees = data.degrees
        if self.batch_size > 0:
            n_steps = int(((degrees + self.batch_size - 1) // self.batch_size).sum())
        else:
            n_steps = int((degrees > 0).sum())
        return upload, loss, n_steps * self.local_epochs

    def _change_hook(self, cohort: Tensor, data) -> Any:
        """The recorder's per-round hook (None when nothing records); weights as `Upload`'s."""
        if self.change_recorder is None:
            return None
        return self.change_recorder(cohort, (data.degrees * self.local_epochs).to(self.user_emb.dtype))

    def score(self, users: Tensor, item_table: Tensor) -> Tensor:
        """``p_u . q_i`` for all items: computed on the device from the table the server sent."""
        return self.user_emb[users] @ item_table.T

    def generator_states(self) -> dict[str, Any]:
        return {round_purpose(k): g.get_state() for k, g in enumerate(self.round_gens)}

    def load_generator_states(self, states: dict[str, Any]) -> None:
        for k, gen in enumerate(self.round_gens):
            if round_purpose(k) in states:
                gen.set_state(states[round_purpose(k)])


class FedAvgServer(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init: torch.Generator,
        init_std: float,
        server_lr: float,
        cohort_fraction: float,
        seed: int,
    ) -> None:
        super().__init__()
        self.n_users, self.server_lr, self.cohort_fraction = n_users, server_lr, cohort_fraction
        self.register_buffer("item_emb", torch.randn(n_items, dim, generator=init) * init_std)
        self.cohort_gen = torch_generator(seed, "cohort")

    def configure_round(self) -> tuple[Tensor, Tensor]:
        """The round's cohort (sorted client ids) and what each of its clients is sent."""
        cohort = sample_cohort(self.n_users, self.cohort_fraction, self.cohort_gen)
        return cohort.to(self.item_emb.device), self.item_emb

    def aggregate(self, upload: Upload) -> None:
        self.item_emb.copy_(fedavg_rows(self.item_emb, upload, self.server_lr))

    def state(self) -> dict[str, Tensor]:
        """Everything the server holds (uploads are consumed within the round)."""
        return dict(self.named_buffers())

    def generator_states(self) -> dict[str, Any]:
        return {"cohort": self.cohort_gen.get_state()}

    def load_generator_states(self, states: dict[str, Any]) -> None:
        if "cohort" in states:
            self.cohort_gen.set_state(states["cohort"])
