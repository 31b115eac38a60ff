"""``fedEraser`` (Liu et al., FedEraser, IWQoS 2021). Recorded (`FedEraserRecorder`) at round 1 and every ``every`` (Δ) rounds: every cohort
client's own update of each item row it touched, ``U_ci = q_ci - q_i`` (client ids, FedAvg
weights, item ids, rows), the server's graph-table update of that round (``user0``/``item0``
after minus before, dense) and ``Q`` after aggregation. Unlearning (`fed_eraser`): calibrated
retraining from the initial model without the revoked edges: a fresh model (same seed, same
init) on the edited data; for each stored round ``t`` in order, the edges that entered up to
``t`` enter its graph, the round's stored cohort runs ``calib_epochs`` local epochs from the
current ``Q`` (updates ``U'_ci``), each update is calibrated to ``|U_ci| * U'_ci / |U'_ci|``
(the stored update's length, the new direction; ``U'`` itself where nothing was stored),
FedAvg'ed into ``Q`` (weights: the clients' example counts, as `Upload`), then the server's
graph step on the edited graph runs ``server.steps * calib_server_factor`` Adam steps
(default factor Δ/2: the graph sees some of the Δ rounds' steps it skips, at a fraction of
the cost; ``server_steps_per_round * Δ`` would cost as much as retraining). R/Δ + 1 rounds
instead of R. The stored graph-table updates and ``Q`` are FedEraser's server-side history
(the paper's server keeps the global model at every calibration round): they count in its
storage; the calibration reads the client updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedshare.federated.rounds import Upload, fedavg_rows
from fedshare.unlearning.context import UnlearnContext
from fedshare.unlearning.history import (
    ClientUpdates,
    HistoryStore,
    RoundChanges,
    RoundRecorder,
    server_tables,
)


def calibrate(stored: ClientUpdates, new: ClientUpdates, n_items: int) -> ClientUpdates:
    """FedEraser's calibration: ``|U| * U' / |U'|`` where a stored ``U`` exists, else ``U'``."""
    new_keys, old_keys = new.keys(n_items), stored.keys(n_items)
    deltas = new.deltas.clone()
    if old_keys.numel() and new_keys.numel():
        pos = torch.searchsorted(old_keys, new_keys).clamp_max(old_keys.numel() - 1)
        hit = torch.nonzero(old_keys.index_select(0, pos) == new_keys).squeeze(1)
        old_norm = stored.deltas.index_select(0, pos.index_select(0, hit)).norm(dim=1)
        new_rows = deltas.index_select(0, hit)
        scale = old_norm / new_rows.norm(dim=1).clamp_min(1e-12)
        deltas.index_copy_(0, hit, new_rows * scale.unsqueeze(1))
    return ClientUpdates(new.users, new.weights, new.indptr, new.items, deltas)


def fed_eraser(ctx: UnlearnContext):
    """Calibrated retraining from the initial model on the stored rounds (module docstring)."""
    opts = ctx.options
    every = int(opts["every"])
    calib_epochs = int(opts["calib_epochs"])
    factor = float(opts["calib_server_factor"] or max(1.0, every / 2))  # null: every/2 (the YAML's rule)
    store = HistoryStore(ctx.store)
    rounds = [r for r in store.rounds() if r <= ctx.rounds]
    if not rounds:
        raise ValueError(
            f"fedEraser: no stored rounds in {ctx.store} (was FedEraserRecorder on while learning?)"
        )
    model = ctx.build(ctx.dm.revoked(ctx.users.numpy(), ctx.items.numpy()))
    server, clients = model.server, model.clients
    n_items = server.item_emb.shape[0]
    device = server.item_emb.device
    optimizer = model.configure_optimizers()
    saved = clients.local_epochs, server.steps, clients.change_recorder
    collector = RoundChanges(n_items)
    clients.change_recorder, clients.local_epochs = collector, calib_epochs
    server.steps = max(1, round(saved[1] * factor)) if saved[1] > 0 else 0
    done, prev = 0, 0
    try:
        for t in rounds:
            for r in range(prev + 1, t + 1):  # the edges that entered up to t (revoked ones gone)
                server.receive_shares(*clients.shares_starting(r), r)
            prev = t
            stored = ClientUpdates.from_tensors(store.load(t))
            cohort = stored.users.to(device)
            clients.fit(cohort, server.item_emb, server.views(cohort))
            new = collector.result()
            assert new is not None
            server.aggregate(_to(calibrate(stored, new, n_items).upload(n_items), device))
            server.graph_step(optimizer)
            done += 1
        for r in range(prev + 1, ctx.rounds + 1):  # later sharers: the final graph is retrain's
            server.receive_shares(*clients.shares_starting(r), r)
    finally:
        clients.local_epochs, server.steps, clients.change_recorder = saved
    server.refresh_views()
    model.unlearn_rounds = done  # calibration rounds run (retrain runs ctx.rounds)
    return model


def _to(upload: Upload, device: torch.device) -> Upload:
    return Upload(upload.delta_sum.to(device), upload.weight_sum.to(device))


class FedEraserRecorder(RoundRecorder):
    """FedEraser's history: round 1 and every ``every`` rounds (``store/round-rXXXXX.safetensors``)."""

    def __init__(self, store: Path, every: int) -> None:
        super().__init__(store)
        if int(every) < 1:
            raise ValueError(f"FedEraserRecorder: every must be >= 1, got {every!r}")
        self.every = int(every)
        self.history = HistoryStore(self.store)

    def due(self, round_: int) -> bool:
        return round_ == 1 or round_ % self.every == 0

    def record(self, round_: int, module: Any, before: dict[str, Tensor]) -> None:
        server = module.server
        changes = self._round_changes(round_)
        after = server_tables(server)
        n_items = after["q"].shape[0]
        q_agg = fedavg_rows(before["q"], changes.upload(n_items), float(server.server_lr))
        self.history.save(
            round_,
            {
                **changes.tensors(),
                "user0_update": (after["user0"] - before["user0"]).float(),
                "item0_update": (after["item0"] - before["item0"]).float(),
                "q": q_agg.float(),
            },
        )
