"""Unlearning methods behind one interface, and how their results are judged (DESIGN.md section 3).

A method gets an `UnlearnContext` (the learned model before deletion, the revoked pairs, the
data, the method's own store) and returns a model from which the revoked pairs are gone:

- ``delete_only``: delete the edges from every server store, no correction;
- ``finetune``: delete, then keep training for a few rounds;
- ``retrain``: train from scratch with the revoked pairs local (the gold standard);
- ``contrastive``: FedShare's method. Delete, then a few Adam steps on the affected nodes
  (the revoking users, the revoked items and their ``hops``-hop neighbours in the old graph):
  the anchor is a node's view on the edited graph, the positive its view from the latest
  snapshot taken before the revoked edges entered (on the edited graph), the negatives its
  views on the old graph from the current parameters and the later snapshots (what the
  revoked edges induced); plus BPR on the affected users' remaining shared edges to keep
  utility; then ``Q`` is re-aligned with the corrected views of the affected items. Two
  choices of ours, beyond DESIGN.md: each node's loss is weighted by its *influence*, the
  share of its edges that were revoked, and only nodes of influence >= ``min_weight`` move
  (the revoking users; an item that lost a few of its hundreds of edges keeps its row). On
  ML-1M, moving every affected row (a fresh Adam moves each row with a gradient by about lr)
  cost 6-22% of all users' Recall@20; these two choices keep it within 0.5% of retraining.
- ``fedEraser`` and ``fru``: the federated-unlearning baselines, in `fedshare.unlearning.baselines`
  (calibrated retraining from stored client updates; rollback of the server's stored top-α
  updates and replay). They record their history while learning (`lightning_modules.history`).

Judging (`judge`): test Recall/NDCG for all users and for the revoking users; forgetting as
the share of revoked items still in the server-side top-K of their user (``forget/hit@K``);
a membership-inference attack (revoked pairs against never-shared test pairs of the same
users, scored server-side by ``z_u . z_i``) as ROC AUC.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedshare.eval.metrics import RankingMetrics
from fedshare.federated.losses import info_nce_in_batch
from fedshare.graph.lightgcn import EdgeSampler, bpr_loss
from fedshare.graph.shared_graph import SharedGraph
from fedshare.seeding import torch_generator

METHODS = ("contrastive", "retrain", "fedEraser", "fru", "finetune", "delete_only")
AVAILABLE = METHODS


@dataclass
class UnlearnContext:
    learned: Any  # FedShareModule after learning, before any deletion; methods copy it
    dm: Any  # the FederatedDataModule of the run
    users: Tensor  # revoked pairs (user, item), int64 CPU
    items: Tensor
    rounds: int  # rounds of the learning phase
    options: dict[str, Any]  # the method's own section of cfg.unlearn
    store: Path  # the method's store folder in the run
    build: Callable[[Any], Any]  # dm -> a fresh module with the run's config (for retrain)
    snapshots: Any = None  # SnapshotStore of the learning phase (contrastive)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``, counted on disk (0 if it does not exist)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- methods -----------------------------------------------------------------------------------


def deleted_copy(ctx: UnlearnContext):
    model = copy.deepcopy(ctx.learned)
    model.unshare(ctx.users, ctx.items)
    return model


def delete_only(ctx: UnlearnContext):
    return deleted_copy(ctx)


def finetune(ctx: UnlearnContext):
    model = deleted_copy(ctx)
    optimizer = model.configure_optimizers()
    for r in range(ctx.rounds + 1, ctx.rounds + 1 + int(ctx.options.get("rounds", 5))):
        model.run_round(r, optimizer)
    return model


def retrain(ctx: UnlearnContext):
    model = ctx.build(ctx.dm.revoked(ctx.users.numpy(), ctx.items.numpy()))
    optimizer = model.configure_optimizers()
    for r in range(1, ctx.rounds + 1):
        model.run_round(r, optimizer)
    return model


def contrastive(ctx: UnlearnContext):
    """Snapshot-anchored contrastive unlearning on the affected neighbourhood (module docstring)."""
    opts = ctx.options
    # defaults as configs/config.yaml (unlearn.contrastive)
    steps, lr, tau = int(opts.get("steps", 150)), float(opts.get("lr", 0.07)), float(opts.get("tau", 0.2))
    retain, batch = float(opts.get("retain", 0.3)), int(opts.get("batch", 4096))
    if ctx.snapshots is None:
        raise ValueError("contrastive unlearning needs the learning phase's snapshots (unlearn.snapshots)")
    old_graph: SharedGraph = ctx.learned.server.graph
    model = deleted_copy(ctx)
    server = model.server
    layers = server.layers
    graph = server.graph

    # the revoked edges entered at these rounds; the positive comes from before the first
    entered = int(old_graph.entry_rounds(ctx.users, ctx.items).min())
    before = ctx.snapshots.latest_before(entered)
    if before is None:
        raise ValueError(
            f"no snapshot was taken before round {entered}, when the revoked edges entered; "
            "keep round 0 in unlearn.snapshots"
        )
    later = [r for r in ctx.snapshots.rounds() if r >= entered]
    snap = ctx.snapshots.load(before)
    hops = int(opts.get("hops", 0))
    aff_u, aff_i = old_graph.neighbourhood(ctx.users, ctx.items, hops)
    weight = _node_weights(
        old_graph, ctx.users, ctx.items, aff_u, aff_i, str(opts.get("weighting", "influence"))
    )
    with torch.no_grad():
        pu, pi = graph.propagate(snap["user0"], snap["item0"], layers)
        positive = torch.cat([pu[aff_u], pi[aff_i]])
        negatives = []
        for user0, item0 in [(server.user0, server.item0)] + [
            (s["user0"], s["item0"]) for s in (ctx.snapshots.load(r) for r in later)
        ]:
            nu, ni = old_graph.propagate(user0.detach(), item0.detach(), layers)
            negatives.append(torch.cat([nu[aff_u], ni[aff_i]]))
        negatives = torch.stack(negatives, dim=1)  # [nodes, n_neg, d]

    # retention: the remaining shared edges of the affected users
    eu, ei = graph.edges()
    keep = torch.isin(eu, aff_u)
    sampler = None
    if keep.any():
        local = SharedGraph(graph.n_users, graph.n_items)
        local.add_edges(eu[keep], ei[keep], 0)
        sampler = EdgeSampler(local)
    gen = torch_generator(int(opts.get("seed", 0)), "unlearn-contrastive")
    # only the affected rows move: a fresh Adam moves every row with a gradient by about lr per
    # step, however small the gradient, and the rest of the graph owes nothing to the revoked edges
    frozen_u = torch.ones(graph.n_users, dtype=torch.bool)
    frozen_i = torch.ones(graph.n_items, dtype=torch.bool)
    movable = weight >= float(opts.get("min_weight", 0.1))  # nodes the revoked edges shaped enough
    frozen_u[aff_u[movable[: aff_u.numel()]]] = False
    frozen_i[aff_i[movable[aff_u.numel() :]]] = False
    optimizer = torch.optim.Adam([server.user0, server.item0], lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            zu, zi = graph.propagate(server.user0, server.item0, layers)
            anchor = F.normalize(torch.cat([zu[aff_u], zi[aff_i]]), dim=-1)
            pos = (anchor * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)
            neg = torch.einsum("nd,nkd->nk", anchor, F.normalize(negatives, dim=-1))
            per_node = -F.log_softmax(torch.cat([pos, neg], dim=1) / tau, dim=1)[:, 0]
            loss = (weight * per_node).sum() / weight.sum()
            if sampler is not None and retain > 0:
                u, p, n = sampler.sample(batch, gen)
                bpr, l2 = bpr_loss(zu, zi, server.user0, server.item0, u, p, n, server.reg)
                loss = loss + retain * (bpr + l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        server.user0.grad[frozen_u.to(server.user0.device)] = 0
        server.item0.grad[frozen_i.to(server.item0.device)] = 0
        optimizer.step()

    # Q was pulled toward the old item views; pull the affected rows toward the corrected ones
    with torch.no_grad():
        _, zi = graph.propagate(server.user0, server.item0, layers)
    items = aff_i[: server.align_items] if aff_i.numel() > server.align_items else aff_i
    if server.lambda_cl > 0 and server.q_align_lr > 0 and items.numel() > 1:
        for _ in range(int(opts.get("q_steps", 5))):
            q_rows = server.item_emb.index_select(0, items).requires_grad_(True)
            with torch.enable_grad():
                align = info_nce_in_batch(zi.index_select(0, items), q_rows, server.tau).mean()
                (grad,) = torch.autograd.grad(server.lambda_cl * align, q_rows)
            server.item_emb.index_add_(0, items, grad, alpha=-server.q_align_lr)
    server.refresh_views()
    return model


WEIGHTINGS = ("influence", "uniform")


def _node_weights(
    graph: SharedGraph, users: Tensor, items: Tensor, aff_u: Tensor, aff_i: Tensor, weighting: str
) -> Tensor:
    """Weight of each affected node (users ``aff_u`` then items ``aff_i``) in the unlearning loss.

    ``uniform``: 1 each. ``influence``: the share of the node's edges that were revoked (its
    degree in the old graph), so a revoking user who took back half of what it shared is pulled
    hard, a popular item that lost one of its hundreds of edges barely, and a neighbour that lost
    nothing not at all (it keeps only the retention loss). Propagation averages over neighbours,
    so this is how much of a node's view the revoked edges made.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unlearn.contrastive.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    n = aff_u.numel() + aff_i.numel()
    if weighting == "uniform":
        return torch.ones(n)
    eu, ei = graph.edges()
    deg_u = torch.bincount(eu, minlength=graph.n_users).clamp_min(1)
    deg_i = torch.bincount(ei, minlength=graph.n_items).clamp_min(1)
    rev_u = torch.bincount(users, minlength=graph.n_users)
    rev_i = torch.bincount(items, minlength=graph.n_items)
    return torch.cat([(rev_u / deg_u)[aff_u], (rev_i / deg_i)[aff_i]]).float()


def _baselines() -> dict[str, Callable[[UnlearnContext], Any]]:
    from fedshare.unlearning.baselines import fed_eraser, fru

    return {"fedEraser": fed_eraser, "fru": fru}


RUNNERS: dict[str, Callable[[UnlearnContext], Any]] = {
    **_baselines(),
    "contrastive": contrastive,
    "retrain": retrain,
    "finetune": finetune,
    "delete_only": delete_only,
}


def run_method(name: str, ctx: UnlearnContext) -> tuple[Any, float]:
    """The unlearned model and the method's wall time in seconds."""
    if name not in RUNNERS:
        raise ValueError(
            f"unknown or unavailable unlearning method {name!r}; available: {', '.join(AVAILABLE)}"
        )
    t0 = time.perf_counter()
    model = RUNNERS[name](ctx)
    return model, time.perf_counter() - t0


# ---- judging -----------------------------------------------------------------------------------


@torch.no_grad()
def ranking(module, users: Tensor, batch_users: int = 2048) -> dict[str, float]:
    """Test metrics of ``users`` (full ranking, masked as the test stage masks), overall only."""
    metric = RankingMetrics(module.ks, module.group_names)
    for chunk in users.split(batch_users):
        module._evaluate(chunk, "test", ("train", "valid"), metric)
    return {k: float(v) for k, v in metric.compute().items() if "/share=" not in k}


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


def judge(module, dm, users: Tensor, items: Tensor, k: int = 20) -> dict[str, float]:
    """The numbers every method is judged by (keys without the ``unlearn/<method>/`` prefix)."""
    everyone = torch.arange(dm.n_users)
    revoking = torch.unique(users)
    out = {f"test/{key}": v for key, v in ranking(module, everyone).items() if key.endswith(f"@{k}")}
    out.update(
        {f"revoking/{key}": v for key, v in ranking(module, revoking).items() if key.endswith(f"@{k}")}
    )
    out[f"forget/hit@{k}"] = forget_hits(module, users, items, k)
    out["mia/auc"] = mia_auc(module, users, items, dm.test.indptr, dm.test.items)
    return out
