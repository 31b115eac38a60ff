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


def bpr_step(
    graph: SharedGraph,
    user0: Tensor,
    item0: Tensor,
    users: Tensor,
    pos: Tensor,
    neg: Tensor,
    reg: float,
    layers: int,
    extra=None,
) -> tuple[Tensor, Tensor]:
    """Writes ``user0.grad`` and ``item0.grad``: the exact gradient of :func:`bpr_loss` through
    ``graph.propagate`` (plus what ``extra`` adds), computed by hand; returns ``(bpr, l2)``.

    The same numbers as autograd up to float rounding (the tests compare them), at a fraction
    of the cost: autograd's backward of three row gathers and a split writes four zero-filled
    node tables per step and keeps the propagated table alive. Here BPR's gradient with respect
    to the output is three ``index_add_`` into one table (the forward's own buffer, reused), and
    the gradient of the layer-0 tables is ``M`` applied to it (``M`` is symmetric): one forward
    and one backward propagation, nothing else node-sized but the L2 rows.

    ``extra(out)``, if given, is called with the propagated ``[n_nodes, d]`` table (users then
    items) before its buffer is reused, and returns ``(node_rows, grad_rows)`` pairs to add to
    the output's gradient (an alignment term on some rows, say), or nothing.
    """
    n_users, batch = graph.n_users, users.numel()
    nodes = torch.cat([user0.detach(), item0.detach()])
    out = graph.smooth(nodes, layers)
    pos_n, neg_n = pos + n_users, neg + n_users
    zu, zi, zj = out.index_select(0, users), out.index_select(0, pos_n), out.index_select(0, neg_n)
    diff = zi.sub_(zj)
    margin = torch.linalg.vecdot(zu, diff)
    bpr = -F.logsigmoid(margin).mean()
    coef = torch.sigmoid(-margin).div_(-batch).unsqueeze(1)  # d bpr / d margin
    more = list(extra(out) or ()) if extra is not None else []
    grad_out = out.zero_()  # the forward's buffer, now the output's gradient
    grad_out.index_add_(0, users, diff.mul_(coef))
    zu.mul_(coef)
    grad_out.index_add_(0, pos_n, zu)
    grad_out.index_add_(0, neg_n, zu.neg_())
    for rows, grad_rows in more:
        grad_out.index_add_(0, rows, grad_rows)
    grad = graph.smooth(grad_out, layers)
    del grad_out, out
    rows = torch.cat([users, pos_n, neg_n])
    picked = nodes.index_select(0, rows)
    l2 = reg * 0.5 * picked.square().sum() / batch
    grad.index_add_(0, rows, picked, alpha=reg / batch)
    user0.grad, item0.grad = grad[:n_users], grad[n_users:]
    return bpr, l2
