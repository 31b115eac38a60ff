"""The server's shared-interaction graph and LightGCN propagation over it.

The server of a federated recommender sees only the (user, item) interactions that users chose
to share. :class:`SharedGraph` keeps them as one homogeneous DGL graph, users numbered
``0..n_users-1`` and items ``n_users..n_users+n_items-1``, with both directions of every
interaction as edges, and runs LightGCN over it::

    E_0 = [user_emb; item_emb],   E_{k+1} = D^-1/2 A D^-1/2 E_k,   out = mean(E_0, ..., E_L)

Sharing is incremental and revocable, so edges are added and removed in place on the same
``DGLGraph`` (``add_edges`` / ``remove_edges``), never by building a new graph. (DGL itself
re-creates its internal index from the edited edge list on each edit, O(E): ~10-50 ms at Gowalla
size.) Next to the graph an edge log records the round at which each edge entered; a removed
edge is deleted from the graph, the log and the cached normalisation alike (revoked data must
leave every server store).

Propagation scales by ``D^-1/2`` per node before and after an unweighted sum over neighbours
(DGL's ``copy_u``/``sum`` SpMM) instead of weighting every edge by ``1/sqrt(deg(u) deg(v))``:
the same numbers, and about 9x faster on CPU, because DGL's unweighted SpMM runs a fast
(libxsmm) kernel while ``u_mul_e`` does not. Gowalla-sized random graph, 3 layers, d=64,
2 threads, forward / forward+backward: ~40 / ~85 ms here, against ~340 / ~820 ms with edge
weights, ~265 / ~575 ms for ``torch.sparse.mm`` on COO and ~60 / ~340 ms on CSR (its backward
is slow). ``python -m fedshare.bench propagate`` runs :func:`bench_propagate`. Nodes of degree 0 get no
messages; their scale is clamped so nothing divides by zero.

PyPI's DGL wheels are CPU-only: on a GPU (or with ``spmm="torch"``) the graph's DGL object stays on
the CPU for edits and propagation runs the same scaled sum with a ``torch.sparse`` CSR matrix of
the unweighted adjacency on ``device``.

Either way the whole propagation is one autograd node (:class:`_LightGCN`): LightGCN's output is
``M E_0`` with ``M = mean_k (D^-1/2 A D^-1/2)^k`` linear and symmetric, so its backward is the
same propagation run on the gradient. Nothing per layer is saved, and each layer costs one SpMM
and two passes over the node table; at a million users the node table (1.1M x 64 floats) makes
those passes, not the SpMM, most of a graph step.

:func:`propagate_reference` is the same computation written with a ``torch.sparse`` matrix: the
documented definition the tests compare against, not meant for training.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fedshare.graph.dgl_compat import import_dgl

dgl = import_dgl()

IdsLike = Tensor | np.ndarray | Sequence[int]


def _ids(values: IdsLike, name: str) -> Tensor:
    """Integer ids as a flat int64 CPU tensor; floats and bools are refused, not truncated."""
    t = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be integer ids, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.int64).reshape(-1)


def _pairs(users: IdsLike, items: IdsLike) -> tuple[Tensor, Tensor]:
    u, i = _ids(users, "users"), _ids(items, "items")
    if u.numel() != i.numel():
        raise ValueError(f"users and items must pair up: got {u.numel()} users and {i.numel()} items")
    return u, i


def _first(mask: Tensor) -> tuple[int, int]:
    """Index of the first True in ``mask`` and how many more there are (for error messages)."""
    where = mask.nonzero().reshape(-1)
    return int(where[0]), int(where.numel()) - 1


def _more(n: int) -> str:
    return f" (and {n} more)" if n else ""


def _sym_norm(users: Tensor, items: Tensor, n_users: int, n_items: int) -> Tensor:
    """``deg^-1/2`` per node of the bipartite graph, nodes numbered users then items; 0 stays 0."""
    deg = torch.bincount(torch.cat([users, items + n_users]), minlength=n_users + n_items)
    return deg.double().clamp(min=1).pow(-0.5)


SPMM_BACKENDS = ("auto", "dgl", "torch")
_DGL_DEVICES: dict[str, bool] = {}


def dgl_runs_on(device: str | torch.device) -> bool:
    """Whether this DGL build can hold a graph on ``device`` (PyPI's wheels: the CPU only)."""
    kind = torch.device(device).type
    if kind not in _DGL_DEVICES:
        try:
            empty = torch.empty(0, dtype=torch.int64)
            dgl.graph((empty, empty), num_nodes=1, device=device)
            _DGL_DEVICES[kind] = True
        except Exception:  # DGLError "Device API cuda is not enabled", or a torch device error
            _DGL_DEVICES[kind] = False
    return _DGL_DEVICES[kind]


def _mean_of_powers(x: Tensor, norm: Tensor, spmm, layers: int) -> Tensor:
    """``mean(x, S x, ..., S^L x)`` with ``S = D^-1/2 A D^-1/2``, ``spmm(h) = A h`` unweighted.

    In the scaled space ``f_k = D^-1/2 E_k``: ``f_0 = D^-1/2 x``, ``E_{k+1} = D^-1/2 (A f_k)``,
    ``f_{k+1} = D^-1 (A f_k)``; so each layer is one SpMM and two fused passes over the table
    (accumulate, rescale), and nothing is kept for the backward."""
    total = x.clone()
    h = x * norm
    inv_deg = norm.square()
    for k in range(layers):
        s = spmm(h)
        total.addcmul_(s, norm)  # E_{k+1} = D^-1/2 A f_k
        if k + 1 < layers:
            h = s.mul_(inv_deg)
    return total.div_(layers + 1)


class _LightGCN(torch.autograd.Function):
    """LightGCN's output ``M x``, ``M = mean_k S^k``, as one autograd node. ``M`` is linear and
    symmetric (``S`` is), so the gradient is ``M grad``: the same propagation run on the
    gradient, with no layer outputs saved (autograd through the layers would keep ``L`` tables
    and make about twice as many passes over them)."""

    @staticmethod
    def forward(ctx, x: Tensor, norm: Tensor, spmm, layers: int) -> Tensor:
        ctx.norm, ctx.spmm, ctx.layers = norm, spmm, layers
        return _mean_of_powers(x, norm, spmm, layers)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return _mean_of_powers(grad.contiguous(), ctx.norm, ctx.spmm, ctx.layers), None, None, None


class SharedGraph:
    """Shared (user, item) interactions as a DGL graph, with an edge log and LightGCN.

    The edge log (sorted int64 keys ``user * n_items + item`` and the round of each) lives on
    the CPU; propagation runs on ``device``. ``spmm`` picks how: ``"dgl"`` (the DGL graph ``g``
    lives on ``device``), ``"torch"`` (``g`` stays on the CPU, propagation uses a
    ``torch.sparse`` matrix on ``device``), or ``"auto"``: DGL where this DGL build runs, else
    torch.
    """

    def __init__(
        self, n_users: int, n_items: int, device: str | torch.device = "cpu", spmm: str = "auto"
    ) -> None:
        for name, n in (("n_users", n_users), ("n_items", n_items)):
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
                raise ValueError(f"{name} must be an int >= 1, got {n!r}")
        if spmm not in SPMM_BACKENDS:
            raise ValueError(f"spmm must be one of {SPMM_BACKENDS}, got {spmm!r}")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.spmm = spmm
        empty = torch.empty(0, dtype=torch.int64)
        # int64 ids: DGL's CPU SpMM is ~4x slower with int32 graphs here.
        self.g = dgl.graph((empty, empty), num_nodes=self.n_nodes, idtype=torch.int64)
        self.device = torch.device("cpu")
        self._keys = empty.clone()  # sorted, one per undirected edge
        self._rounds = empty.clone()  # aligned with _keys
        self._norm: dict[torch.dtype, Tensor] = {}  # deg^-1/2 per node, on device, by dtype
        self._adj: dict[torch.dtype, Tensor] = {}  # the torch path's adjacency, on device, by dtype
        self.to(device)

    @property
    def backend(self) -> str:
        """The SpMM that :meth:`propagate` runs now: ``"dgl"`` or ``"torch"``."""
        return "dgl" if self.spmm != "torch" and self.g.device == self.device else "torch"

    # -- sizes and views ---------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        """Interactions in the graph (each is two directed DGL edges)."""
        return int(self._keys.numel())

    def edges(self) -> tuple[Tensor, Tensor]:
        """``(users, items)`` of every current edge, sorted by (user, item); CPU int64."""
        return self._keys // self.n_items, self._keys % self.n_items

    def edge_rounds(self) -> Tensor:
        """The round at which each edge of :meth:`edges` entered, aligned with it."""
        return self._rounds.clone()

    def entry_rounds(self, users: IdsLike, items: IdsLike) -> Tensor:
        """The round at which each given (user, item) edge entered; ``ValueError`` if one is absent."""
        u, i = _pairs(users, items)
        pos, found = self._find(u, i)
        if not found.all():
            k, more = _first(~found)
            raise ValueError(f"(user {int(u[k])}, item {int(i[k])}) is not in the graph{_more(more)}")
        return self._rounds.index_select(0, pos)

    def has_edges(self, users: IdsLike, items: IdsLike) -> Tensor:
        """Whether each (user, item) pair is in the graph (out-of-range pairs are not)."""
        u, i = _pairs(users, items)
        _, found = self._find(u, i)
        return found

    def __repr__(self) -> str:
        return (
            f"SharedGraph(n_users={self.n_users}, n_items={self.n_items}, "
            f"n_edges={self.n_edges}, device={self.device})"
        )

    # -- lookups -----------------------------------------------------------------------------

    def _in_range(self, u: Tensor, i: Tensor) -> Tensor:
        return (u >= 0) & (u < self.n_users) & (i >= 0) & (i < self.n_items)

    def _find(self, u: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        """Position of each pair in the log and whether it is there; vectorized binary search."""
        keys = u * self.n_items + i
        pos = torch.searchsorted(self._keys, keys)
        found = self._in_range(u, i)
        if self.n_edges == 0:
            return pos, torch.zeros_like(found)
        found &= (pos < self.n_edges) & (self._keys[pos.clamp(max=self.n_edges - 1)] == keys)
        return pos, found

    def _check_range(self, u: Tensor, i: Tensor) -> None:
        bad = ~self._in_range(u, i)
        if bad.any():
            k, more = _first(bad)
            raise ValueError(
                f"(user {int(u[k])}, item {int(i[k])}) is out of range{_more(more)}: "
                f"users are 0..{self.n_users - 1}, items are 0..{self.n_items - 1}"
            )

    def _check_unique(self, u: Tensor, i: Tensor) -> None:
        keys, order = torch.sort(u * self.n_items + i, stable=True)
        dup = keys[1:] == keys[:-1]
        if dup.any():
            k, more = _first(dup)
            j = int(order[k + 1])
            raise ValueError(f"(user {int(u[j])}, item {int(i[j])}) is given twice in one call{_more(more)}")

    def _node_ids(self, u: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        return u.to(self.g.device), (i + self.n_users).to(self.g.device)

    # -- edits -------------------------------------------------------------------------------

    def add_edges(self, users: IdsLike, items: IdsLike, round: int) -> int:
        """Add new (user, item) edges shared at ``round``; returns how many were added.

        All pairs are checked before anything changes: an id out of range, a pair given twice,
        or a pair already in the graph raises ``ValueError`` naming it, and the graph is left as
        it was.
        """
        if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
            raise ValueError(f"round must be an int >= 0, got {round!r}")
        u, i = _pairs(users, items)
        return self._add(u, i, torch.full_like(u, int(round)))

    def _add(self, u: Tensor, i: Tensor, rounds: Tensor) -> int:
        if u.numel() == 0:
            return 0
        self._check_range(u, i)
        self._check_unique(u, i)
        pos, found = self._find(u, i)
        if found.any():
            k, more = _first(found)
            raise ValueError(
                f"(user {int(u[k])}, item {int(i[k])}) is already in the graph "
                f"(added in round {int(self._rounds[pos[k]])}){_more(more)}"
            )
        src, dst = self._node_ids(u, i)
        self.g.add_edges(torch.cat([src, dst]), torch.cat([dst, src]))  # in place, both directions
        # Merge into the sorted log: new key j lands at (its position among old keys) + j.
        new, order = torch.sort(u * self.n_items + i)
        at = torch.searchsorted(self._keys, new) + torch.arange(new.numel())
        old = torch.ones(self.n_edges + new.numel(), dtype=torch.bool)
        old[at] = False
        keys, log = torch.empty_like(old, dtype=torch.int64), torch.empty_like(old, dtype=torch.int64)
        keys[at], keys[old] = new, self._keys
        log[at], log[old] = rounds[order], self._rounds
        self._keys, self._rounds, self._norm, self._adj = keys, log, {}, {}
        return int(new.numel())

    def remove_edges(self, users: IdsLike, items: IdsLike) -> int:
        """Remove (user, item) edges, both directions and their log entries; returns how many.

        A pair not in the graph (or given twice) raises ``ValueError`` naming it, before anything
        changes.
        """
        u, i = _pairs(users, items)
        if u.numel() == 0:
            return 0
        pos, found = self._find(u, i)
        if not found.all():
            k, more = _first(~found)
            raise ValueError(f"(user {int(u[k])}, item {int(i[k])}) is not in the graph{_more(more)}")
        self._check_unique(u, i)
        src, dst = self._node_ids(u, i)
        eids = torch.cat([self.g.edge_ids(src, dst), self.g.edge_ids(dst, src)])
        self.g.remove_edges(eids)  # in place; DGL drops the edges' data with them
        keep = torch.ones(self.n_edges, dtype=torch.bool)
        keep[pos] = False
        self._keys, self._rounds = self._keys[keep], self._rounds[keep]
        self._norm, self._adj = {}, {}
        return int(u.numel())

    # -- propagation -------------------------------------------------------------------------

    def norm(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``deg^-1/2`` per node as ``[n_nodes, 1]`` on ``device``; cached until the next edit."""
        if dtype not in self._norm:
            u, i = self.edges()
            norm = _sym_norm(u, i, self.n_users, self.n_items)  # float64, cast once per dtype
            self._norm[dtype] = norm.to(self.device, dtype).unsqueeze(1)
        return self._norm[dtype]

    def adjacency(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The unweighted symmetric adjacency as a sparse CSR matrix on ``device``; cached."""
        if dtype not in self._adj:
            u, i = self.edges()
            src, dst = torch.cat([u, i + self.n_users]), torch.cat([i + self.n_users, u])
            order = torch.argsort(dst * self.n_nodes + src)
            src, dst = src[order], dst[order]
            indptr = torch.zeros(self.n_nodes + 1, dtype=torch.int64)
            indptr[1:] = torch.cumsum(torch.bincount(dst, minlength=self.n_nodes), 0)
            values = torch.ones(src.numel(), dtype=dtype)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                adj = torch.sparse_csr_tensor(
                    indptr, src, values, (self.n_nodes, self.n_nodes), check_invariants=True
                )
            self._adj[dtype] = adj.to(self.device)
        return self._adj[dtype]

    def propagate(self, user_emb: Tensor, item_emb: Tensor, layers: int) -> tuple[Tensor, Tensor]:
        """LightGCN: the mean of ``E_0..E_layers``, split into (users, items); differentiable.

        ``layers=0`` returns the inputs themselves.
        """
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"layers must be an int >= 0, got {layers!r}")
        self._check_embeddings(user_emb, item_emb)
        if layers == 0:
            return user_emb, item_emb
        norm, spmm = self.norm(user_emb.dtype), self._spmm(user_emb.dtype)
        out = _LightGCN.apply(torch.cat([user_emb, item_emb]), norm, spmm, layers)
        return out[: self.n_users], out[self.n_users :]

    def smooth(self, nodes: Tensor, layers: int) -> Tensor:
        """``M x`` for one node table ``[n_nodes, d]`` (users then items), outside autograd: a new
        table. ``M`` is symmetric, so this is also LightGCN's backward (the gradient of the
        layer-0 tables from the gradient of the output): the graph steps that write their
        gradients by hand (:func:`fedshare.graph.lightgcn.bpr_step`) call it twice per step."""
        if nodes.dim() != 2 or nodes.shape[0] != self.n_nodes or nodes.device != self.device:
            raise ValueError(
                f"nodes must be [{self.n_nodes}, d] on {self.device}, got {list(nodes.shape)} on {nodes.device}"
            )
        if layers == 0:
            return nodes.detach().clone()
        with torch.no_grad():
            return _mean_of_powers(nodes.detach(), self.norm(nodes.dtype), self._spmm(nodes.dtype), layers)

    def _spmm(self, dtype: torch.dtype):
        """``h -> A h`` (unweighted) on the backend that :meth:`propagate` runs."""
        if self.backend == "dgl":
            return lambda x: dgl.ops.copy_u_sum(self.g, x)
        adj = self.adjacency(dtype)
        return lambda x: torch.sparse.mm(adj, x)

    def _check_embeddings(self, user_emb: Tensor, item_emb: Tensor) -> None:
        for name, emb, n in (("user_emb", user_emb, self.n_users), ("item_emb", item_emb, self.n_items)):
            if emb.dim() != 2 or emb.shape[0] != n:
                raise ValueError(f"{name} must be [{n}, d], got {list(emb.shape)}")
            if emb.device != self.device:
                raise ValueError(f"{name} is on {emb.device} but the graph is on {self.device}; call .to()")
        if user_emb.shape[1] != item_emb.shape[1] or user_emb.dtype != item_emb.dtype:
            raise ValueError(
                f"user_emb and item_emb must share width and dtype, got {user_emb.shape[1]} {user_emb.dtype}"
                f" and {item_emb.shape[1]} {item_emb.dtype}"
            )

    # -- neighbourhoods ----------------------------------------------------------------------

    def neighbourhood(self, users: IdsLike, items: IdsLike, hops: int) -> tuple[Tensor, Tensor]:
        """Users and items within ``hops`` hops of the seeds (seeds included), sorted ids.

        ``users`` and ``items`` are two separate seed sets (not pairs); items are item ids
        ``0..n_items-1``, not node ids. Each hop is one vectorized pass over the edge log.
        """
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
            raise ValueError(f"hops must be an int >= 0, got {hops!r}")
        su, si = _ids(users, "users"), _ids(items, "items")
        for name, ids, n in (("user", su, self.n_users), ("item", si, self.n_items)):
            bad = (ids < 0) | (ids >= n)
            if bad.any():
                k, more = _first(bad)
                raise ValueError(f"seed {name} {int(ids[k])} is out of range 0..{n - 1}{_more(more)}")
        at_u = torch.zeros(self.n_users, dtype=torch.bool)
        at_i = torch.zeros(self.n_items, dtype=torch.bool)
        at_u[su], at_i[si] = True, True
        eu, ei = self.edges()
        for _ in range(hops):
            next_u, next_i = at_u.clone(), at_i.clone()
            next_i[ei[at_u[eu]]] = True
            next_u[eu[at_i[ei]]] = True
            if torch.equal(next_u, at_u) and torch.equal(next_i, at_i):
                break  # closed: further hops add nothing
            at_u, at_i = next_u, next_i
        return at_u.nonzero().reshape(-1), at_i.nonzero().reshape(-1)

    # -- state and devices -------------------------------------------------------------------

    def state(self) -> dict[str, Tensor]:
        """``{"edges": [E, 2] (user, item), "rounds": [E]}``, int64 on the CPU, copies."""
        u, i = self.edges()
        return {"edges": torch.stack([u, i], dim=1), "rounds": self._rounds.clone()}

    @classmethod
    def from_state(
        cls,
        n_users: int,
        n_items: int,
        state: dict[str, Tensor],
        device: str | torch.device = "cpu",
        spmm: str = "auto",
    ) -> SharedGraph:
        """Rebuild a graph saved with :meth:`state`: same edges, rounds and propagation."""
        missing = {"edges", "rounds"} - set(state)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}; expected keys 'edges' and 'rounds'")
        edges, rounds = _ids(state["edges"], "state['edges']"), _ids(state["rounds"], "state['rounds']")
        if edges.numel() != 2 * rounds.numel():
            raise ValueError(
                f"state['edges'] must be [E, 2] with E = len(state['rounds']) = {rounds.numel()}, "
                f"got {list(torch.as_tensor(state['edges']).shape)}"
            )
        graph = cls(n_users, n_items, device, spmm)
        edges = edges.reshape(-1, 2)
        graph._add(edges[:, 0].contiguous(), edges[:, 1].contiguous(), rounds)
        return graph

    def to(self, device: str | torch.device) -> SharedGraph:
        """Move propagation (and the cached normalisation) to ``device``; returns ``self``.

        The edge log stays on the CPU. With the DGL backend ``g`` moves too (a new DGL graph
        object); with the torch backend it stays on the CPU. ``spmm="dgl"`` on a device this
        DGL build cannot use raises ``ValueError``.
        """
        target = torch.empty(0, device=device).device  # "cuda" comes back as "cuda:0"
        use_dgl = self.spmm == "dgl" or (self.spmm == "auto" and dgl_runs_on(target))
        if use_dgl and not dgl_runs_on(target):
            raise ValueError(
                f"this DGL build cannot run on {target} (PyPI's DGL wheels are CPU-only); "
                "use spmm='torch' or 'auto'"
            )
        g_device = target if use_dgl else torch.device("cpu")
        if self.g.device != g_device:
            self.g = self.g.to(g_device)
        if target != self.device:
            self.device = target
            self._norm = {dtype: norm.to(target) for dtype, norm in self._norm.items()}
            self._adj = {dtype: adj.to(target) for dtype, adj in self._adj.items()}
        return self


def normalized_adjacency(
    users: Tensor, items: Tensor, n_users: int, n_items: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph as a coalesced sparse COO matrix (CPU)."""
    users, items = _pairs(users, items)
    norm = _sym_norm(users, items, n_users, n_items)
    src = torch.cat([users, items + n_users])
    dst = torch.cat([items + n_users, users])
    n = n_users + n_items
    weight = (norm[src] * norm[dst]).to(dtype)
    adj = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, (n, n), check_invariants=True)
    return adj.coalesce()


def _mean_of_layers(adj: Tensor, h: Tensor, layers: int) -> Tensor:
    total = h
    for _ in range(layers):
        h = torch.sparse.mm(adj, h)
        total = total + h
    return total / (layers + 1)


def propagate_reference(
    users: Tensor,
    items: Tensor,
    n_users: int,
    n_items: int,
    user_emb: Tensor,
    item_emb: Tensor,
    layers: int,
) -> tuple[Tensor, Tensor]:
    """LightGCN with an explicit ``torch.sparse`` matrix ``D^-1/2 A D^-1/2``; the reference.

    ``(users, items)`` are the interactions (one per undirected edge). Slow but plainly the
    definition: the tests check :meth:`SharedGraph.propagate` against it.
    """
    adj = normalized_adjacency(users, items, n_users, n_items, user_emb.dtype).to(user_emb.device)
    out = _mean_of_layers(adj, torch.cat([user_emb, item_emb]), layers)
    return out[:n_users], out[n_users:]


def random_edges(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n_edges`` distinct uniform random (user, item) pairs, for benchmarks and tests."""
    if n_edges > n_users * n_items:
        raise ValueError(f"{n_edges} edges do not fit {n_users} users x {n_items} items")
    gen = torch.Generator().manual_seed(seed)
    if 2 * n_edges > n_users * n_items:  # dense: a permutation beats rejection sampling
        keys = torch.randperm(n_users * n_items, generator=gen)[:n_edges]
        return keys // n_items, keys % n_items
    keys = torch.empty(0, dtype=torch.int64)
    while keys.numel() < n_edges:  # top up after dropping repeats; one pass when sparse
        more = torch.randint(0, n_users * n_items, (n_edges - keys.numel(),), generator=gen)
        keys = torch.cat([keys, more]).unique()
    keys = keys[torch.randperm(keys.numel(), generator=gen)[:n_edges]]
    return keys // n_items, keys % n_items


def bench_propagate(
    n_users: int = 29_858,
    n_items: int = 40_981,
    n_edges: int = 810_128,
    dim: int = 64,
    layers: int = 3,
    repeats: int = 5,
    threads: int = 2,
) -> dict[str, float]:
    """Best-of-``repeats`` ms of forward and forward+backward: DGL propagate vs ``torch.sparse``.

    Defaults: a random graph of Gowalla's size. The sparse matrices are built before timing, so
    both sides time propagation only (one warm-up run each is not timed). ``threads`` binds DGL
    too: DGL's kernels run on the libgomp that torch loaded first, so they share its setting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        users, items = random_edges(n_users, n_items, n_edges)
        graph = SharedGraph(n_users, n_items)
        graph.add_edges(users, items, round=0)
        coo = normalized_adjacency(users, items, n_users, n_items)
        user_emb = torch.randn(n_users, dim, requires_grad=True)
        item_emb = torch.randn(n_items, dim, requires_grad=True)

        def dgl_step() -> Tensor:
            return torch.cat(graph.propagate(user_emb, item_emb, layers))

        def sparse_step(adj: Tensor):
            return lambda: _mean_of_layers(adj, torch.cat([user_emb, item_emb]), layers)

        result: dict[str, float] = {}
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            csr = coo.to_sparse_csr()
        steps = {"dgl": dgl_step, "sparse_coo": sparse_step(coo), "sparse_csr": sparse_step(csr)}
        for name, step in steps.items():
            forward, both = [], []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                out = step()
                t1 = time.perf_counter()
                out.square().sum().backward()
                t2 = time.perf_counter()
                user_emb.grad = item_emb.grad = None
                forward.append(t1 - t0)
                both.append(t2 - t0)
            result[f"{name}_fwd_ms"] = 1000 * min(forward[1:])
            result[f"{name}_fwd_bwd_ms"] = 1000 * min(both[1:])
        return result
    finally:
        torch.set_num_threads(before)
