"""LightGCN on a `SharedGraph`: layer-0 tables, BPR on sampled edges, negatives off the graph.

Used twice: by the FedShare server (its graph step on the shared edges, DESIGN.md section 2)
and by the centralized upper bound (`LightGCNModule`, all training edges on the server). The
loss is the one of the LightGCN paper: ``mean_k -log sigmoid(z_u.z_i - z_u.z_j)`` plus
``reg/2 * (|e_u|^2 + |e_i|^2 + |e_j|^2) / batch`` on the layer-0 rows of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedshare.graph.shared_graph import SharedGraph


def adam(params, lr: float) -> torch.optim.Adam:
    """The Adam of every graph model (FedShare's server, the centralized LightGCN, unlearning).

    ``fused=True``: one pass over each table per step instead of about a dozen elementwise
    passes. The tables are node-sized (1.1M x 64 floats at a million users), so this is most of
    a graph step's cost at scale: ~1.7 s against ~0.4 s per step on a 1.1M x 64 table here.
    Same update up to float rounding (1e-7 after 20 steps).
    """
    return torch.optim.Adam(params, lr=lr, fused=True)


class EdgeSampler:
    """Uniform minibatches of a graph's edges with negatives the user has no edge to.

    Built from one edge set (call `refresh` after the graph changed): the sorted keys
    ``user * n_items + item`` answer "is (u, j) an edge?" by binary search.
    """

    def __init__(self, graph: SharedGraph) -> None:
        self.n_items = graph.n_items
        self.refresh(graph)

    def refresh(self, graph: SharedGraph) -> None:
        users, items = graph.edges()
        self.users, self.items = users.cpu(), items.cpu()
        self.keys = torch.sort(self.users * self.n_items + self.items).values

    @property
    def n_edges(self) -> int:
        return int(self.users.numel())

    def _is_edge(self, users: Tensor, items: Tensor) -> Tensor:
        cand = users * self.n_items + items
        pos = torch.searchsorted(self.keys, cand).clamp_max(max(self.keys.numel() - 1, 0))
        return self.keys.index_select(0, pos) == cand

    def negatives(self, users: Tensor, generator: torch.Generator, max_tries: int = 50) -> Tensor:
        neg = torch.randint(self.n_items, (users.numel(),), generator=generator)
        todo = torch.nonzero(self._is_edge(users, neg)).squeeze(1)
        for _ in range(max_tries):
            if todo.numel() == 0:
                break
            neg[todo] = torch.randint(self.n_items, (todo.numel(),), generator=generator)
            todo = todo[self._is_edge(users[todo], neg[todo])]
        return neg  # a user linked to (almost) every item may keep a few positives as negatives

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``batch_size`` edges drawn with replacement, and a negative item for each."""
        idx = torch.randint(self.n_edges, (batch_size,), generator=generator)
        users = self.users.index_select(0, idx)
        return users, self.items.index_select(0, idx), self.negatives(users, generator)

    def epoch(self, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"):
        """One pass over every edge in a random order, in minibatches (the standard epoch).

        The order and every negative are drawn up front on the CPU and moved to ``device`` once,
        so a GPU epoch does no host transfer per batch.
        """
        perm = torch.randperm(self.n_edges, generator=generator)
        users, items = self.users.index_select(0, perm), self.items.index_select(0, perm)
        neg = self.negatives(users, generator)
        users, items, neg = (t.to(device, non_blocking=True) for t in (users, items, neg))
        for lo in range(0, self.n_edges, batch_size):
            yield users[lo : lo + batch_size], items[lo : lo + batch_size], neg[lo : lo + batch_size]


def bpr_loss(
    user_out: Tensor,
    item_out: Tensor,
    user0: Tensor,
    item0: Tensor,
    users: Tensor,
    pos: Tensor,
    neg: Tensor,
    reg: float,
) -> tuple[Tensor, Tensor]:
    """LightGCN's BPR loss on propagated tables and its L2 term on the layer-0 rows."""
    zu = user_out.index_select(0, users)
    x = torch.linalg.vecdot(zu, item_out.index_select(0, pos) - item_out.index_select(0, neg))
    loss = -F.logsigmoid(x).mean()
    l2 = (
        user0.index_select(0, users).square().sum()
        + item0.index_select(0, pos).square().sum()
        + item0.index_select(0, neg).square().sum()
    )
    return loss, reg * 0.5 * l2 / users.numel()
