"""The federated-unlearning baselines FedShare is compared with, adapted to shared edges.

What is revoked are shared ``(user, item)`` edges of the server graph. The clients keep those
pairs as local data, so their influence on the clients' local training is legitimate; what
must go is their influence on the server-side model: the graph's layer-0 tables ``user0`` /
``item0`` and the item table ``Q`` (``server.item_emb``), which the server's alignment pulls
toward the graph's item views. Each baseline records, while the model learns, only the history
it needs, in its own store folder (``run/unlearn/<method>/``), as safetensors files (float32
rows, int64 ids) with a manifest (sha256, bytes; `HistoryStore`). The bytes on disk are its
storage cost.

- ``fedEraser`` (Liu et al., FedEraser, IWQoS 2021). Recorded (`FedEraserRecorder`, in
  lightning_modules/history.py) at round 1 and every ``every`` (Δ) rounds: every cohort
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
- ``fru`` (Yuan et al., Federated Unlearning for On-Device Recommendation, WSDM 2023). Recorded
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

Both runners: ``fn(ctx: UnlearnContext) -> module``; options from ``ctx.options``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedshare.federated.rounds import Upload
from fedshare.unlearning.snapshots import SnapshotStore

if TYPE_CHECKING:  # fedshare.unlearning.methods imports this module for its RUNNERS
    from fedshare.unlearning.methods import UnlearnContext

# defaults of the options (cfg.unlearn.fedEraser / cfg.unlearn.fru)
ERASER_EVERY = 10
ERASER_CALIB_EPOCHS = 1
FRU_ALPHA = 0.2
FRU_CALIB_STEPS = 2


class HistoryStore(SnapshotStore):
    """A folder of verified per-round history files ``round-r{round:05d}.safetensors`` plus
    ``manifest.json`` (atomic writes, sha256 and size checked on load: see `SnapshotStore`)."""

    @staticmethod
    def filename(round_: int) -> str:
        return f"round-r{round_:05d}.safetensors"

    def _snapshot_files(self) -> list[Path]:
        return sorted(self.folder.glob("round-r*.safetensors")) if self.folder.is_dir() else []


# ---- per-client item-row updates ---------------------------------------------------------------


@dataclass
class ClientUpdates:
    """Item-row updates of a cohort, grouped by client (CSR): client ``users[c]`` (FedAvg weight
    ``weights[c]``) changed rows ``items[indptr[c]:indptr[c+1]]`` (sorted) by ``deltas[...]``."""

    users: Tensor  # [C] int64, sorted global ids
    weights: Tensor  # [C] float32
    indptr: Tensor  # [C+1] int64
    items: Tensor  # [N] int64
    deltas: Tensor  # [N, d] float32

    @property
    def owner(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(self.users.numel()), self.indptr.diff())

    def keys(self, n_items: int) -> Tensor:
        """``user * n_items + item`` of every row (sorted)."""
        return self.users.index_select(0, self.owner) * n_items + self.items

    def tensors(self) -> dict[str, Tensor]:
        return {
            "clients": self.users,
            "weights": self.weights.float(),
            "indptr": self.indptr,
            "items": self.items,
            "deltas": self.deltas.float(),
        }

    @staticmethod
    def from_tensors(t: dict[str, Tensor]) -> ClientUpdates:
        return ClientUpdates(t["clients"], t["weights"], t["indptr"], t["items"], t["deltas"])

    def top_alpha(self, alpha: float) -> ClientUpdates:
        """Each client's ``ceil(alpha * rows)`` (at least one) rows of largest L2 norm."""
        if alpha >= 1.0:
            return self
        owner = self.owner
        counts = self.indptr.diff()
        keep_n = torch.ceil(counts.double() * alpha).long().clamp(min=1).minimum(counts)
        norms = self.deltas.norm(dim=1)
        order = torch.argsort(norms, descending=True, stable=True)
        order = order.index_select(0, torch.argsort(owner.index_select(0, order), stable=True))
        rank = torch.arange(order.numel()) - self.indptr.index_select(0, owner)  # owner of sorted pos
        keep = order[rank < keep_n.index_select(0, owner)]
        keep = keep.sort().values  # back to (client, item) order
        new_indptr = torch.zeros_like(self.indptr)
        torch.cumsum(keep_n, 0, out=new_indptr[1:])
        return ClientUpdates(
            self.users,
            self.weights,
            new_indptr,
            self.items.index_select(0, keep),
            self.deltas.index_select(0, keep),
        )

    def upload(self, n_items: int) -> Upload:
        """The FedAvg sums of these rows (as the clients would have uploaded them)."""
        w = self.weights.index_select(0, self.owner).to(self.deltas.dtype)
        delta_sum = self.deltas.new_zeros((n_items, self.deltas.shape[1]))
        delta_sum.index_add_(0, self.items, self.deltas * w.unsqueeze(1))
        weight_sum = self.deltas.new_zeros(n_items).index_add_(0, self.items, w)
        return Upload(delta_sum, weight_sum)


class RoundChanges:
    """Collects a round's per-(client, item) updates through `client_round`'s ``on_changes``.

    Installed as ``clients.change_recorder``: each ``fit`` calls it with ``(cohort, weights)``
    and passes the hook it returns to `client_round`; `result` sums the changes per pair.
    """

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self._cohort: Tensor | None = None
        self._weights: Tensor | None = None
        self._keys: list[Tensor] = []
        self._rows: list[Tensor] = []

    def __call__(self, cohort: Tensor, weights: Tensor):
        self._cohort = cohort.detach().cpu().clone()
        self._weights = weights.detach().cpu().float().clone()
        self._keys, self._rows = [], []
        return self.add

    def add(self, clients: Tensor, items: Tensor, changes: Tensor) -> None:
        # kept where the round runs (no device sync per piece); summed and moved in `result`
        self._keys.append(clients * self.n_items + items)
        self._rows.append(changes.detach().clone())

    def clear(self) -> None:
        self._cohort = self._weights = None
        self._keys, self._rows = [], []

    def result(self) -> ClientUpdates | None:
        """Every client's own update of every row it touched in the last ``fit`` (None: no fit)."""
        if self._cohort is None:
            return None
        n_items, cohort = self.n_items, self._cohort
        if self._keys:
            keys = torch.cat(self._keys)
            rows = torch.cat(self._rows)
        else:
            keys, rows = torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        deltas = rows.new_zeros((uniq.numel(), rows.shape[1])).index_add_(0, inverse, rows)
        uniq, deltas = uniq.cpu(), deltas.to("cpu", torch.float32)
        counts = torch.bincount(uniq // n_items, minlength=cohort.numel())
        indptr = torch.zeros(cohort.numel() + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=indptr[1:])
        return ClientUpdates(cohort, self._weights, indptr, uniq % n_items, deltas)


def install_changes(clients: Any, n_items: int) -> RoundChanges:
    """The clients' `RoundChanges` (one is installed if none is): recorders share it."""
    current = getattr(clients, "change_recorder", None)
    if isinstance(current, RoundChanges):
        return current
    if current is not None:
        raise RuntimeError(f"clients.change_recorder is already set to {type(current).__name__}")
    collector = RoundChanges(n_items)
    clients.change_recorder = collector
    return collector


def remove_changes(clients: Any) -> None:
    if isinstance(getattr(clients, "change_recorder", None), RoundChanges):
        clients.change_recorder = None


# ---- server-side row updates -------------------------------------------------------------------


def top_rows(update: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(rows, updates)``: the ``ceil(alpha * changed)`` changed rows of largest L2 norm (sorted)."""
    norms = update.norm(dim=1)
    changed = torch.nonzero(norms > 0).squeeze(1)
    k = min(changed.numel(), math.ceil(alpha * changed.numel())) if alpha < 1 else changed.numel()
    rows = changed.index_select(0, norms.index_select(0, changed).topk(k).indices).sort().values
    return rows, update.index_select(0, rows).float().contiguous()


SERVER_TABLES = ("user0", "item0", "q")


def server_tables(server: Any) -> dict[str, Tensor]:
    """Copies of the server tables the baselines unlearn: ``user0``, ``item0``, ``q`` (``Q``)."""
    return {
        "user0": server.user0.detach().cpu().clone(),
        "item0": server.item0.detach().cpu().clone(),
        "q": server.item_emb.detach().cpu().clone(),
    }


def fru_rollback(tables: dict[str, Tensor], store: HistoryStore, since: int) -> dict[str, Tensor]:
    """The tables minus the stored server updates of every round ``>= since`` (new tensors):
    the state before round ``since``, exactly when every changed row was kept (α = 1)."""
    out = {k: v.detach().clone() for k, v in tables.items()}
    for r in sorted((r for r in store.rounds() if r >= since), reverse=True):
        t = store.load(r)
        for name in SERVER_TABLES:
            rows, upd = t[f"{name}.rows"], t[f"{name}.updates"]
            out[name].index_add_(0, rows.to(out[name].device), upd.to(out[name]), alpha=-1.0)
    return out


# ---- runners -------------------------------------------------------------------------------------


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
    every = int(opts.get("every", ERASER_EVERY))
    calib_epochs = int(opts.get("calib_epochs", ERASER_CALIB_EPOCHS))
    factor = float(opts.get("calib_server_factor") or max(1.0, every / 2))
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


def fru(ctx: UnlearnContext):
    """Rollback of the server's graph tables to before the revoked edges, then calibration.

    The graph tables lose the stored (top-α) updates of every round from the first revoked
    edge's entry on, then each of those rounds is replayed as ``calib_steps`` graph steps on the
    edited graph. With ``replay_q`` Q is rolled back too and the devices' stored rows are
    FedAvg'ed into it each replayed round (over the round's full denominators): on ML-1M that
    left Q out of step with the clients' private rows (Recall@20 0.03), so by default Q stays
    as learned and the device stores, written and counted as FRU keeps them, are not replayed.
    """
    calib_steps = int(ctx.options.get("calib_steps", FRU_CALIB_STEPS))
    devices, server_store = HistoryStore(ctx.store / "devices"), HistoryStore(ctx.store / "server")
    if not server_store.rounds():
        raise ValueError(f"fru: no stored rounds in {ctx.store} (was FRURecorder on while learning?)")
    entered = int(ctx.learned.server.graph.entry_rounds(ctx.users, ctx.items).min())
    model = copy.deepcopy(ctx.learned)
    model.unshare(ctx.users, ctx.items)
    server = model.server
    n_items = server.item_emb.shape[0]
    device = server.item_emb.device
    replay_q = bool(ctx.options.get("replay_q", False))
    rolled = fru_rollback(server_tables(server), server_store, entered)
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
