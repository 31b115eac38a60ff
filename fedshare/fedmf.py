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

from fedshare.federation import Upload, client_round, cohort_data, fedavg_rows, plan_round, sample_cohort
from fedshare.interactions import UserCSR
from fedshare.seeding import torch_generator


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
    ) -> None:
        super().__init__()
        self.local_epochs, self.batch_size, self.lr, self.reg = local_epochs, batch_size, lr, reg
        self.register_buffer("user_emb", torch.randn(n_users, dim, generator=init) * init_std)
        self.register_buffer("train_indptr", torch.zeros(n_users + 1, dtype=torch.long), persistent=False)
        self.register_buffer("train_items", torch.zeros(0, dtype=torch.long), persistent=False)
        self.round_gen = torch_generator(seed, "round")  # shuffles and negatives, drawn on devices
        # optional ``(cohort, weights) -> on_changes`` hook factory (see `client_round`): set by
        # the unlearning baselines' recorders (fedshare.baselines.RoundChanges) while they record
        self.change_recorder: Any = None

    def attach_data(self, train: UserCSR) -> None:
        """Every client's own training interactions ``D_u`` (local and shared alike)."""
        device = self.user_emb.device
        self.train_indptr = torch.from_numpy(np.ascontiguousarray(train.indptr)).to(device)
        self.train_items = torch.from_numpy(np.ascontiguousarray(train.items)).to(device)
        self.n_items = train.n_items

    def fit(self, cohort: Tensor, item_table: Tensor) -> tuple[Upload, Tensor]:
        """The cohort's local epochs on its own data; private rows are updated in place."""
        return self._local_round(cohort, item_table)

    def _local_round(self, cohort: Tensor, item_table: Tensor, after_epoch=None) -> tuple[Upload, Tensor]:
        """`client_round` on the cohort's data (``after_epoch``: see there; the recorder's hook
        when one is installed); private rows are updated in place."""
        data = cohort_data(cohort, self.train_indptr, self.train_items)
        plan = plan_round(data, self.n_items, self.local_epochs, self.round_gen)
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
        return upload, loss

    def _change_hook(self, cohort: Tensor, data) -> Any:
        """The recorder's per-round hook (None when nothing records); weights as `Upload`'s."""
        if self.change_recorder is None:
            return None
        return self.change_recorder(cohort, (data.degrees * self.local_epochs).to(self.user_emb.dtype))

    def score(self, users: Tensor, item_table: Tensor) -> Tensor:
        """``p_u . q_i`` for all items: computed on the device from the table the server sent."""
        return self.user_emb[users] @ item_table.T

    def generator_states(self) -> dict[str, Any]:
        return {"round": self.round_gen.get_state()}

    def load_generator_states(self, states: dict[str, Any]) -> None:
        if "round" in states:
            self.round_gen.set_state(states["round"])


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
