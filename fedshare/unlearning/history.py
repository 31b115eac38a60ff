"""The history the federated-unlearning baselines (``fedEraser``, ``fru``) record while learning.

What is revoked are shared ``(user, item)`` edges of the server graph. The clients keep those
pairs as local data, so their influence on the clients' local training is legitimate; what
must go is their influence on the server-side model: the graph's layer-0 tables ``user0`` /
``item0`` and the item table ``Q`` (``server.item_emb``), which the server's alignment pulls
toward the graph's item views. Each baseline records, while the model learns, only the history
it needs, in its own store folder (``run/unlearn/<method>/``), as safetensors files (float32
rows, int64 ids) with a manifest (sha256, bytes; `HistoryStore`). The bytes on disk are its
storage cost.

A round's clients' updates come through ``clients.change_recorder`` (a shared `RoundChanges`,
installed for a round in which a recorder is due, removed at its end; recorders due in the
same round share it), so recording costs nothing in rounds that keep nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedshare.federated.rounds import Upload
from fedshare.unlearning.context import Recorder
from fedshare.unlearning.snapshots import SnapshotStore


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


class RoundRecorder(Recorder):
    """A baseline's recorder: the server tables before a due round, the clients' updates during it."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._before: dict[str, Tensor] | None = None
        self._changes: RoundChanges | None = None

    def due(self, round_: int) -> bool:
        raise NotImplementedError

    def record(self, round_: int, module: Any, before: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def before_round(self, round_: int, module: Any) -> None:
        self._before = None
        if not self.due(round_):
            return
        server = getattr(module, "server", None)
        if server is None or not hasattr(server, "user0"):
            raise TypeError(
                f"{type(self).__name__}: {type(module).__name__} has no graph server (model=fedshare)"
            )
        self._changes = install_changes(module.clients, server.item_emb.shape[0])
        self._before = server_tables(server)

    def after_round(self, round_: int, module: Any) -> None:
        if self._before is None:
            return
        before, self._before = self._before, None
        remove_changes(module.clients)  # a recorder due next round installs one again
        try:
            self.record(round_, module, before)
        finally:
            self._changes = None  # the round's rows are freed once every recorder has kept its part

    def close(self, module: Any) -> None:
        remove_changes(module.clients)

    def _round_changes(self, round_: int) -> ClientUpdates:
        changes = self._changes.result() if self._changes is not None else None
        if changes is None:
            raise RuntimeError(f"{type(self).__name__}: round {round_} trained no clients through the hook")
        return changes
