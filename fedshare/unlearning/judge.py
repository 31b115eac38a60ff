"""How an unlearned model is judged (DESIGN.md section 3).

`judge`: test Recall/NDCG for all users and for the revoking users; forgetting as the share of
revoked items still in the server-side top-K of their user (``forget/hit@K``); a
membership-inference attack (revoked pairs against never-shared test pairs of the same users,
scored server-side by ``z_u . z_i``) as ROC AUC.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedshare.eval.metrics import RankingMetrics


@torch.no_grad()
def _ranked(module, users: Tensor, batch_users: int, target: str, history: tuple[str, ...]) -> dict[str, float]:
    metric = RankingMetrics(module.ks, module.group_names)
    for chunk in users.split(batch_users):
        module._evaluate(chunk, target, history, metric)
    return {k: float(v) for k, v in metric.compute().items()}


def ranking(module, users: Tensor, batch_users: int) -> dict[str, float]:
    """Test metrics of ``users`` (full ranking, masked as the test stage masks), overall only."""
    out = _ranked(module, users, batch_users, "test", ("train", "valid"))
    return {k: v for k, v in out.items() if "/share=" not in k}


def validation(module, n_users: int, batch_users: int) -> dict[str, float]:
    """The learning phase's validation of ``module``: every user's validation items ranked with
    their train items masked, as ``validation_step`` does; ``val/...`` keys, sharing groups included."""
    out = _ranked(module, torch.arange(n_users), batch_users, "valid", ("train",))
    return {f"val/{k}": v for k, v in out.items()}


@torch.no_grad()
def server_scores(module, users: Tensor) -> Tensor:
    """What the server alone can score: its user views against its item views."""
    server = module.server
    return server.user_view.index_select(0, users) @ server.item_view.T


@torch.no_grad()
def forget_hits(module, users: Tensor, items: Tensor, k: int) -> float:
    """Share of revoked pairs whose item is in the server-side top-k of its user.

    The user's other items in the graph are masked (the server knows them); the revoked items
    are not, also while they are still in the graph (the learned model, before deletion)."""
    if users.numel() == 0:
        return float("nan")
    uniq, inverse = torch.unique(users, return_inverse=True)
    scores = server_scores(module, uniq)
    eu, ei = module.server.graph.edges()
    n_items = module.server.graph.n_items
    sel = torch.isin(eu, uniq) & ~torch.isin(eu * n_items + ei, users * n_items + items)
    rows = torch.searchsorted(uniq, eu[sel])
    scores[rows, ei[sel]] = float("-inf")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    hit = (top.index_select(0, inverse) == items.unsqueeze(1)).any(1)
    return float(hit.float().mean())


def auc(members: Tensor, others: Tensor) -> float:
    """ROC AUC of separating ``members`` from ``others`` by score (ties count half)."""
    if members.numel() == 0 or others.numel() == 0:
        return float("nan")
    both = torch.cat([members, others]).double()
    order = torch.argsort(both)
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, both.numel() + 1, dtype=both.dtype)
    # average ranks over ties
    uniq, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    if uniq.numel() < both.numel():
        sums = torch.zeros(uniq.numel(), dtype=both.dtype).index_add_(0, inverse, ranks)
        ranks = (sums / counts).index_select(0, inverse)
    m, o = members.numel(), others.numel()
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * o))


@torch.no_grad()
def mia_auc(module, users: Tensor, items: Tensor, test_indptr, test_items) -> float:
    """Membership inference from server-side scores: revoked pairs vs the same users' test
    pairs (never shared). 0.5: the server's model cannot tell them apart."""
    uniq = torch.unique(users)
    indptr = torch.as_tensor(test_indptr)
    counts = indptr[uniq + 1] - indptr[uniq]
    t_users = torch.repeat_interleave(uniq, counts)
    starts = torch.repeat_interleave(indptr[uniq], counts)
    offs = torch.arange(t_users.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    t_items = torch.as_tensor(test_items)[starts + offs]
    server = module.server
    member = (server.user_view[users] * server.item_view[items]).sum(-1)
    other = (server.user_view[t_users] * server.item_view[t_items]).sum(-1)
    return auc(member, other)


def judge(module, dm, users: Tensor, items: Tensor, k: int) -> dict[str, float]:
    """The numbers every method is judged by (keys without the ``unlearn/<method>/`` prefix)."""
    batch = int(dm.cfg.eval.batch_users)  # as the test stage scores them
    everyone = torch.arange(dm.n_users)
    revoking = torch.unique(users)
    out = {f"test/{key}": v for key, v in ranking(module, everyone, batch).items() if key.endswith(f"@{k}")}
    out.update(
        {f"revoking/{key}": v for key, v in ranking(module, revoking, batch).items() if key.endswith(f"@{k}")}
    )
    out[f"forget/hit@{k}"] = forget_hits(module, users, items, k)
    out["mia/auc"] = mia_auc(module, users, items, dm.test.indptr, dm.test.items)
    return out
