"""``fru`` (Yuan et al., Federated Unlearning for On-Device Recommendation, WSDM 2023). Recorded
(`FRURecorder`) every round: on each device, the client's top-α item-row updates by L2 norm
(``alpha`` of the rows it touched, at least one; ``store/devices/``: the on-device stores,
all counted) and, on the server, the round's update of ``user0``, ``item0`` and ``Q``, each
restricted to its top-α changed rows by norm (``store/server/``). The round each shared edge
entered is in the graph's edge log already. Unlearning (`fru`): a copy of the learned model,
the revoked edges deleted, the server tables rolled back to the round before the first
revoked edge entered by subtracting the stored (top-α) server updates of that round and all
later ones (approximate with α < 1, exact with α = 1: `fru_rollback`), then calibration:
rounds from the entry round to the end are replayed, each adding the devices' stored updates
to ``Q`` by FedAvg over the stored rows and running ``calib_steps`` graph steps on the edited
graph (which also re-align ``Q`` with the edited graph's item views). ``Q`` is rolled back
too: its server-side update holds the alignment toward the old graph's views.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedshare.federated.rounds import Upload
from fedshare.unlearning.context import UnlearnContext
from fedshare.unlearning.fed_eraser import _to
from fedshare.unlearning.history import (
    SERVER_TABLES,
    ClientUpdates,
    HistoryStore,
    RoundRecorder,
    server_tables,
    top_rows,
)


def fru_rollback(
    tables: dict[str, Tensor], store: HistoryStore, since: int, until: int | None = None
) -> dict[str, Tensor]:
    """The tables minus the stored server updates of every round ``since..until`` (new tensors;
    ``until``: the tables' own round, as rounds after the selected model's are stored too): the
    state before round ``since``, exactly when every changed row was kept (α = 1)."""
    out = {k: v.detach().clone() for k, v in tables.items()}
    for r in sorted((r for r in store.rounds() if r >= since and (until is None or r <= until)), reverse=True):
        t = store.load(r)
        for name in SERVER_TABLES:
            rows, upd = t[f"{name}.rows"], t[f"{name}.updates"]
            out[name].index_add_(0, rows.to(out[name].device), upd.to(out[name]), alpha=-1.0)
    return out


def fru(ctx: UnlearnContext):
    """Rollback of the server's graph tables to before the revoked edges, then calibration.

    The graph tables lose the stored (top-α) updates of every round from the first revoked
    edge's entry on, then each of those rounds is replayed as ``calib_steps`` graph steps on the
    edited graph. With ``replay_q`` Q is rolled back too and the devices' stored rows are
    FedAvg'ed into it each replayed round (over the round's full denominators): on ML-1M that
    left Q out of step with the clients' private rows (Recall@20 0.03), so by default Q stays
    as learned and the device stores, written and counted as FRU keeps them, are not replayed.
    """
    calib_steps = int(ctx.options["calib_steps"])
    devices, server_store = HistoryStore(ctx.store / "devices"), HistoryStore(ctx.store / "server")
    if not server_store.rounds():
        raise ValueError(f"fru: no stored rounds in {ctx.store} (was FRURecorder on while learning?)")
    entered = int(ctx.learned.server.graph.entry_rounds(ctx.users, ctx.items).min())
    model = copy.deepcopy(ctx.learned)
    model.unshare(ctx.users, ctx.items)
    server = model.server
    n_items = server.item_emb.shape[0]
    device = server.item_emb.device
    replay_q = bool(ctx.options["replay_q"])
    rolled = fru_rollback(server_tables(server), server_store, entered, ctx.rounds)
    with torch.no_grad():
        server.user0.copy_(rolled["user0"])
        server.item0.copy_(rolled["item0"])
        if replay_q:
            server.item_emb.copy_(rolled["q"])
    optimizer = model.configure_optimizers()
    saved = server.steps
    server.steps = calib_steps
    replayed = 0
    server_rounds = set(server_store.rounds())
    try:
        for t in (r for r in devices.rounds() if entered <= r <= ctx.rounds):
            if not replay_q:  # Q and the private rows stay as learned; only the graph is replayed
                server.graph_step(optimizer)
                replayed += 1
                continue
            stored = ClientUpdates.from_tensors(devices.load(t))
            upload = stored.upload(n_items)
            weight_sum = server_store.load(t).get("q.weight_sum") if t in server_rounds else None
            if weight_sum is not None:  # the round's full FedAvg denominators (FRURecorder)
                upload = Upload(
                    upload.delta_sum, torch.where(upload.weight_sum > 0, weight_sum, upload.weight_sum)
                )
            server.aggregate(_to(upload, device))
            server.graph_step(optimizer)
            replayed += 1
    finally:
        server.steps = saved
    server.refresh_views()
    model.unlearn_rounds = replayed
    return model


class FRURecorder(RoundRecorder):
    """FRU's history, every round: devices' top-α updates and the server's top-α row updates."""

    def __init__(self, store: Path, alpha: float) -> None:
        super().__init__(store)
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"FRURecorder: alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.devices = HistoryStore(self.store / "devices")
        self.server = HistoryStore(self.store / "server")

    def due(self, round_: int) -> bool:
        return True

    def record(self, round_: int, module: Any, before: dict[str, Tensor]) -> None:
        full = self._round_changes(round_)
        changes = full.top_alpha(self.alpha)
        self.devices.save(round_, changes.tensors())
        after = server_tables(module.server)
        # FedAvg's denominators of the round (what the server received with the sums): replaying
        # the top-α rows over them, not over their own weights, keeps each row's step unbiased
        # in scale; over their own weights the largest updates alone drove Q away (ML-1M: recall 0)
        n_items = after["q"].shape[0]
        tensors: dict[str, Tensor] = {"q.weight_sum": full.upload(n_items).weight_sum.float()}
        for name, table in after.items():
            rows, updates = top_rows(table - before[name], self.alpha)
            tensors[f"{name}.rows"], tensors[f"{name}.updates"] = rows, updates
        self.server.save(round_, tensors)
