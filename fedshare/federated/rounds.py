"""The federated round of FedMF-style models, with clients as rows.

Protocol boundary (DESIGN.md section 5):

- a **client step** (`client_round`) sees its own training interactions (``CohortData``), its
  own private rows ``P[u]`` and what the server sent (the item table ``Q``); it returns new
  private rows (kept on the device) and an ``Upload`` (item-row changes and example counts);
- a **server step** (`fedavg_rows`) sees the item table and the uploads, nothing else.

``client_round`` runs every client of the cohort at once as batched tensor operations;
``client_round_reference`` is the plain per-client loop with the same arithmetic, kept for
tests and the benchmark only.

How the cohort is batched: minibatch step ``s`` of every client runs at once (the positions of
client ``c`` visited in step ``s`` are ``order[c][s*B:(s+1)*B]``), in cache-sized pieces cut
between clients. Each client's private copy of an item row is the row the server sent plus the
client's own changes; only the (client, item) pairs used more than once in a round keep those
changes in a side table, the others send their single change straight into the upload sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedshare.data.interactions import gather_rows
from fedshare.federated.losses import bpr_grads


@dataclass(frozen=True)
class CohortData:
    """The training interactions held by the cohort's devices, grouped by client (CSR).

    ``items[indptr[c]:indptr[c+1]]`` are the items of the c-th client of the cohort, sorted.
    """

    users: Tensor  # [C] global user id of each cohort client
    indptr: Tensor  # [C+1]
    items: Tensor  # [N]

    @property
    def n_clients(self) -> int:
        return int(self.users.numel())

    @property
    def degrees(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    @property
    def owner(self) -> Tensor:
        """Cohort row of every interaction."""
        return torch.repeat_interleave(torch.arange(self.n_clients, device=self.items.device), self.degrees)

    def client(self, c: int) -> Tensor:
        return self.items[self.indptr[c] : self.indptr[c + 1]]


@dataclass(frozen=True)
class RoundPlan:
    """The random choices of one round for a cohort: visiting order and negatives per epoch.

    Drawn once for the cohort so the vectorized round and the per-client reference consume the
    very same randomness. ``order[e]`` is a permutation of the cohort's interaction positions
    that keeps each client's positions in the client's own segment (a shuffle within clients);
    ``negatives[e, k]`` is the negative item paired with position ``k`` in epoch ``e``.
    """

    order: Tensor  # [E, N]
    negatives: Tensor  # [E, N]


@dataclass(frozen=True)
class Upload:
    """What clients send to the server for FedAvg, already summed over the senders.

    ``delta_sum[i] = sum_c w_c * (q_ci - q_i)`` over the clients ``c`` that touched row ``i`` (their
    private row after the local epochs minus the row the server sent) and ``weight_sum[i] =
    sum_c w_c`` with ``w_c`` the client's example count. Sums add up, so one client, a whole
    cohort, or one node of a deployment send the same kind of message; the server learns no
    single client's row (as with secure aggregation).
    """

    delta_sum: Tensor  # [n_items, d]
    weight_sum: Tensor  # [n_items]

    @staticmethod
    def from_rows(items: Tensor, delta: Tensor, weight: float, n_items: int) -> Upload:
        """One client's upload from its touched rows (``items`` distinct)."""
        delta_sum = delta.new_zeros((n_items, delta.shape[1]))
        delta_sum[items] = delta * weight
        weight_sum = delta.new_zeros(n_items)
        weight_sum[items] = weight
        return Upload(delta_sum, weight_sum)

    def __add__(self, other: Upload) -> Upload:
        return Upload(self.delta_sum + other.delta_sum, self.weight_sum + other.weight_sum)


def sample_cohort(n_users: int, fraction: float, generator: torch.Generator) -> Tensor:
    """Sorted ids of ``round(fraction * n_users)`` clients (at least one), without replacement."""
    if fraction >= 1.0:
        return torch.arange(n_users)
    size = max(1, int(fraction * n_users + 0.5))
    return torch.randperm(n_users, generator=generator)[:size].sort().values


def cohort_data(users: Tensor, indptr: Tensor, items: Tensor) -> CohortData:
    if users.numel() == indptr.numel() - 1:  # the whole population: no copy
        return CohortData(users, indptr, items)
    sub_indptr, sub_items = gather_rows(indptr, items, users)
    return CohortData(users, sub_indptr, sub_items)


def sample_negatives(
    data: CohortData,
    n_items: int,
    n_epochs: int,
    generator: torch.Generator,
    max_tries: int = 100,
    dense_limit: int = 1 << 26,
) -> Tensor:
    """Uniform negatives for every position and epoch, never one of the client's own items.

    Rejection sampling: draws that hit one of the client's own items are drawn again (each
    client only checks against its own items). Membership is a lookup in a cohort x items bit
    table when that fits in ``dense_limit`` bytes, else a binary search in the sorted keys
    ``c * n_items + i`` of the cohort's data.
    """
    n = data.items.numel()
    owner = data.owner.cpu()
    keys = owner * n_items + data.items.cpu()  # sorted: CSR rows are sorted by item
    if data.n_clients * n_items <= dense_limit:
        table = torch.zeros(data.n_clients * n_items, dtype=torch.bool).index_fill_(0, keys, True)

        def is_own(cand: Tensor) -> Tensor:
            return table.index_select(0, cand)
    else:

        def is_own(cand: Tensor) -> Tensor:
            pos = torch.searchsorted(keys, cand).clamp_max(max(n - 1, 0))
            return keys.index_select(0, pos) == cand if n else torch.zeros_like(cand, dtype=torch.bool)

    neg = torch.randint(n_items, (n_epochs, n), generator=generator)
    flat = neg.view(-1)
    owner_rep = owner.repeat(n_epochs)
    todo = torch.nonzero(is_own(owner_rep * n_items + flat)).squeeze(1)
    for _ in range(max_tries):
        if todo.numel() == 0:
            return neg
        flat[todo] = torch.randint(n_items, (todo.numel(),), generator=generator)
        cand = owner_rep.index_select(0, todo) * n_items + flat.index_select(0, todo)
        todo = todo[is_own(cand)]
    if todo.numel() == 0:
        return neg
    full = torch.unique(owner_rep[todo])
    raise RuntimeError(
        f"could not draw negatives for cohort clients {full[:5].tolist()}: they hold (almost) every item"
    )


def shuffle_within_clients(data: CohortData, n_epochs: int, generator: torch.Generator) -> Tensor:
    """``[E, N]``: per epoch, a permutation of positions that shuffles inside each client's segment."""
    n = data.items.numel()
    owner = data.owner.cpu()
    # key = client in the high bits, a random number in the low 31: sorting groups by client
    # and shuffles within (integer keys sort ~3x faster than float ones here)
    keys = torch.randint(1 << 31, (n_epochs, n), generator=generator) | (owner << 31)
    return torch.argsort(keys, dim=1)


def plan_round(data: CohortData, n_items: int, n_epochs: int, generator: torch.Generator) -> RoundPlan:
    order = shuffle_within_clients(data, n_epochs, generator)
    negatives = sample_negatives(data, n_items, n_epochs, generator)
    device = data.items.device
    return RoundPlan(order.to(device), negatives.to(device))


def _step_layout(degrees: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where each position goes when the cohort's steps are laid out one after another.

    Position ``k`` of client ``c`` (``k`` its rank in the client's visiting order) belongs to step
    ``s = k // B``. Returns ``dest`` (index of each rank in step-major order), ``step_ptr``
    (start of each step) and ``batch`` (``[C, S]`` examples of client c in step s).
    """
    n_steps = int((degrees.max() + batch_size - 1) // batch_size) if degrees.numel() else 0
    s = torch.arange(n_steps, device=degrees.device)
    batch = (degrees.unsqueeze(1) - s * batch_size).clamp(0, batch_size)  # [C, S]
    per_step = batch.sum(0)
    step_ptr = torch.zeros(n_steps + 1, dtype=torch.long, device=degrees.device)
    torch.cumsum(per_step, 0, out=step_ptr[1:])
    offset = torch.cumsum(batch, 0) - batch + step_ptr[:-1]  # [C, S] where client c starts in step s
    owner = torch.repeat_interleave(torch.arange(degrees.numel(), device=degrees.device), degrees)
    indptr = torch.zeros(degrees.numel() + 1, dtype=torch.long, device=degrees.device)
    torch.cumsum(degrees, 0, out=indptr[1:])
    rank = torch.arange(int(indptr[-1]), device=degrees.device) - indptr.index_select(0, owner)
    flat = owner * n_steps + torch.div(rank, batch_size, rounding_mode="floor")
    dest = offset.reshape(-1).index_select(0, flat) + rank % batch_size
    return dest, step_ptr, batch


def _chunk_bounds(owner_major: Tensor, step_ptr: Tensor, chunk_rows: int) -> list[int]:
    """Cuts of the step-major layout into pieces of about ``chunk_rows`` examples.

    A cut falls on a step start or between two clients of a step, never inside one client's
    batch, so a piece updates only rows that no other piece of the same step reads (clients are
    independent). Pieces keep the temporaries of a step in cache; steps stay in order.
    """
    n = owner_major.numel()
    if n == 0:
        return [0]
    owner = owner_major.cpu().numpy()
    can_cut = np.zeros(n + 1, dtype=bool)
    can_cut[1:-1] = owner[1:] != owner[:-1]
    can_cut[step_ptr.cpu().numpy()] = True
    cuts = np.flatnonzero(can_cut)
    out = [0]
    step_starts = set(step_ptr.tolist())
    for cut in cuts[1:]:
        if cut in step_starts or cut - out[-1] >= chunk_rows:
            if cut != out[-1]:
                out.append(int(cut))
    if out[-1] != n:
        out.append(n)
    return out


def client_round(
    user_rows: Tensor,
    item_table: Tensor,
    data: CohortData,
    plan: RoundPlan,
    lr: float,
    reg: float,
    batch_size: int,
    chunk_rows: int = 8192,
    after_epoch: Callable[[Tensor, Tensor], Tensor] | None = None,
    on_changes: Callable[[Tensor, Tensor, Tensor], None] | None = None,
) -> tuple[Tensor, Upload, Tensor]:
    """Every client of the cohort runs its local epochs of BPR-SGD at once.

    ``user_rows[c]`` is the private row of the c-th cohort client; ``item_table`` is the global
    table the server sent. Returns the new private rows, the cohort's upload (weighted sums per
    item row, see `Upload`) and the mean loss per client step.

    Each client's private copy of an item row is the sent row plus the client's own change to
    it. Most (client, item) pairs are used once in a round, and then that change is just the
    one step's update: it goes straight into the upload's sums. Only pairs a client uses more
    than once (a negative drawn twice, every positive when E > 1) keep their running change in
    a side table, so the later uses see the client's updated row.

    ``after_epoch(rows, clients)``, if given, runs at the end of every local epoch on the
    private rows of the given cohort clients and returns their new rows (FedShare's alignment
    step). It must treat clients independently: the reference calls it one client at a time.

    ``on_changes(clients, items, changes)``, if given, sees every change a client makes to an
    item row, one piece of a step at a time: row k of ``changes`` is cohort client
    ``clients[k]``'s (unweighted) change to row ``items[k]``. Summed per (client, item) over the
    round they are each client's own update ``q_ci - q_i`` (what unlearning baselines record).
    The tensors are reused afterwards: a hook copies what it keeps. Unset, nothing changes.
    """
    n_epochs, n = plan.order.shape
    n_items = item_table.shape[0]
    device, dtype = item_table.device, item_table.dtype
    owner = data.owner
    degrees = data.degrees
    bsz = batch_size if batch_size > 0 else max(1, int(degrees.max()) if degrees.numel() else 1)
    dest, step_ptr, batch = _step_layout(degrees, bsz)
    client_weight = (degrees * n_epochs).to(dtype)  # FedAvg weight: the client's example count

    # everything below is laid out step-major: step s of every client is one contiguous slice
    # (index_select/index_copy_, not tensor[idx]: on CPU they are several times faster)
    owner_major = torch.empty(n, dtype=torch.long, device=device).index_copy_(0, dest, owner)
    n_steps = step_ptr.numel() - 1
    step_of = torch.repeat_interleave(torch.arange(n_steps, device=device), step_ptr.diff(), output_size=n)
    weight_major = 1.0 / batch.reshape(-1).index_select(0, owner_major * n_steps + step_of).to(dtype)
    upload_weight_major = client_weight.index_select(0, owner_major).unsqueeze(1)
    pos_major = torch.empty((n_epochs, n), dtype=torch.long, device=device).index_copy_(1, dest, plan.order)
    items_major = data.items.index_select(0, pos_major.reshape(-1)).view(n_epochs, n)
    neg_items_major = plan.negatives.gather(1, pos_major)

    # distinct (client, negative item) pairs; those used more than once get a side-table row
    neg_keys = (owner_major * n_items + neg_items_major).reshape(-1)
    uniq_keys, inverse, counts = torch.unique(neg_keys, return_inverse=True, return_counts=True)
    repeated = counts > 1
    side_row = torch.cumsum(repeated, 0) - 1  # side-table row of each repeated pair
    use_side = repeated.index_select(0, inverse).view(n_epochs, n)
    side_of_use = side_row.index_select(0, inverse).view(n_epochs, n)
    neg_change = torch.zeros((int(repeated.sum()), item_table.shape[1]), dtype=dtype, device=device)
    pos_change = torch.zeros((n, item_table.shape[1]), dtype=dtype, device=device) if n_epochs > 1 else None

    num = torch.zeros_like(item_table)
    p = user_rows.clone()
    total_loss = torch.zeros((), dtype=dtype, device=device)
    bounds = _chunk_bounds(owner_major, step_ptr, chunk_rows)
    for e in range(n_epochs):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            c, w, uw = owner_major[lo:hi], weight_major[lo:hi], upload_weight_major[lo:hi]
            m = hi - lo
            # positives and negatives in one buffer: one gather and one scatter for both
            both_items = torch.cat([items_major[e, lo:hi], neg_items_major[e, lo:hi]])
            q_both = item_table.index_select(0, both_items)
            q_pos, q_neg = q_both[:m], q_both[m:]
            if pos_change is not None and e > 0:
                q_pos += pos_change.index_select(0, pos_major[e, lo:hi])
            side = torch.nonzero(use_side[e, lo:hi]).squeeze(1)
            rows = side_of_use[e, lo:hi].index_select(0, side)
            if side.numel():
                q_neg.index_add_(0, side, neg_change.index_select(0, rows))
            dp, dpos, dneg, loss = bpr_grads(p.index_select(0, c), q_pos, q_neg, w, reg, scale=-lr)
            p.index_add_(0, c, dp)
            if pos_change is not None and e < n_epochs - 1:
                pos_change.index_add_(0, pos_major[e, lo:hi], dpos)
            if side.numel():
                neg_change.index_add_(0, rows, dneg.index_select(0, side))
            # every change a client makes to a row ends up in its final row minus the sent
            # row, so the weighted sums can take them one step at a time (dpos and dneg were
            # written into q_both)
            if on_changes is not None:
                on_changes(torch.cat([c, c]), both_items, q_both)
            num.index_add_(0, both_items, q_both.view(2, m, -1).mul_(uw).view(2 * m, -1))
            total_loss += loss.sum()
        if after_epoch is not None:
            p = after_epoch(p, torch.arange(p.shape[0], device=device))

    den = torch.zeros(n_items, dtype=dtype, device=device)
    den.index_add_(0, data.items, client_weight.index_select(0, owner))
    den.index_add_(0, uniq_keys % n_items, client_weight.index_select(0, uniq_keys // n_items))
    n_client_steps = int((batch > 0).sum()) * n_epochs
    return p, Upload(num, den), total_loss / max(1, n_client_steps)


def client_round_reference(
    user_rows: Tensor,
    item_table: Tensor,
    data: CohortData,
    plan: RoundPlan,
    lr: float,
    reg: float,
    batch_size: int,
    after_epoch: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Upload, Tensor]:
    """The same round as `client_round`, one client at a time, each with its own model copy."""
    n_epochs = plan.order.shape[0]
    n_items = item_table.shape[0]
    new_rows = user_rows.clone()
    upload: Upload | None = None
    total_loss = torch.zeros((), dtype=item_table.dtype, device=item_table.device)
    n_client_steps = 0
    for c in range(data.n_clients):
        start, end = int(data.indptr[c]), int(data.indptr[c + 1])
        if end == start:
            continue
        items = data.items[start:end]
        q = item_table.clone()  # the model the server sent, private to this device from now on
        p = user_rows[c].clone()
        bsz = batch_size if batch_size > 0 else end - start
        for e in range(n_epochs):
            visit = plan.order[e, start:end] - start  # local positions, in this epoch's order
            for s in range(0, end - start, bsz):
                local_pos = visit[s : s + bsz]
                pos_items = items[local_pos]
                neg_items = plan.negatives[e, start + local_pos]
                w = torch.full((local_pos.numel(),), 1.0 / local_pos.numel(), dtype=q.dtype, device=q.device)
                pb = p.expand(local_pos.numel(), -1)
                dp, dpos, dneg, loss = bpr_grads(pb, q[pos_items], q[neg_items], w, reg, scale=-lr)
                p = p + dp.sum(0)
                q.index_add_(0, pos_items, dpos)
                q.index_add_(0, neg_items, dneg)
                total_loss += loss.sum()
                n_client_steps += 1
            if after_epoch is not None:
                p = after_epoch(p.unsqueeze(0), torch.tensor([c], device=p.device))[0]
        touched = torch.unique(torch.cat([items, plan.negatives[:, start:end].reshape(-1)]))
        new_rows[c] = p
        sent = Upload.from_rows(
            touched, q[touched] - item_table[touched], float((end - start) * n_epochs), n_items
        )
        upload = sent if upload is None else upload + sent
    if upload is None:
        upload = Upload(torch.zeros_like(item_table), item_table.new_zeros(n_items))
    return new_rows, upload, total_loss / max(1, n_client_steps)


def fedavg_rows(item_table: Tensor, upload: Upload, server_lr: float) -> Tensor:
    """Server step: ``Q_i += eta * sum_c w_c delta_ci / sum_c w_c`` over the clients that sent row i.

    Rows nobody touched stay as they are. Returns the new table (the input is not modified).
    """
    step = upload.delta_sum / upload.weight_sum.clamp_min(1e-12).unsqueeze(1)
    return item_table + server_lr * step
