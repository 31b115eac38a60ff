"""``contrastive``: FedShare's unlearning, from a few embedding snapshots (DESIGN.md section 3).

Delete, then a few Adam steps on the affected nodes (the revoking users, the revoked items and
their ``hops``-hop neighbours in the old graph): the anchor is a node's view on the edited
graph, the positive its view from the latest snapshot taken before the revoked edges entered
(on the edited graph), the negatives its views on the old graph from the current parameters and
the later snapshots (what the revoked edges induced); plus BPR on the affected users' remaining
shared edges to keep utility; then ``Q`` is re-aligned with the corrected views of the affected
items. Two choices of ours, beyond DESIGN.md: each node's loss is weighted by its *influence*,
the share of its edges that were revoked, and only nodes of influence >= ``min_weight`` move
(the revoking users; an item that lost a few of its hundreds of edges keeps its row). On ML-1M,
moving every affected row (a fresh Adam moves each row with a gradient by about lr) cost 6-22%
of all users' Recall@20; these two choices keep it within 0.5% of retraining.

What it records while learning: `SnapshotRecorder`, the server's embedding snapshots (graph
layer-0 tables and ``Q``) at ``unlearn.snapshots`` rounds; the edge log is the graph's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedshare.federated.losses import info_nce_in_batch
from fedshare.seeding import torch_generator
from fedshare.unlearning.context import Recorder, UnlearnContext, deleted_copy
from fedshare.unlearning.snapshots import SnapshotStore


def snapshot_dir(run_dir: Path) -> Path:
    """The contrastive method's store: the learning phase's embedding snapshots."""
    return run_dir / "unlearn" / "contrastive" / "snapshots"


class SnapshotRecorder(Recorder):
    """Saves the module's ``snapshot_tensors()`` at the chosen rounds.

    Round 0 is the state before the first round; round ``r >= 1`` the state after round ``r``.
    The module decides what a snapshot holds, so this works for any model that provides it.
    """

    artifact = "snapshots"

    def __init__(self, store: SnapshotStore, rounds: Iterable[int]) -> None:
        self.snapshots = store
        self.store = store.folder
        self.rounds = sorted(set(rounds))

    def _save(self, round_: int, module: Any) -> None:
        snapshot_tensors = getattr(module, "snapshot_tensors", None)
        if not callable(snapshot_tensors):
            raise TypeError(
                f"SnapshotRecorder: {type(module).__name__} has no snapshot_tensors(); "
                "unlearn.snapshots needs a model that provides it"
            )
        self.snapshots.save(round_, snapshot_tensors())

    def start(self, module: Any, done: int) -> None:
        if done == 0 and 0 in self.rounds:  # a resumed run saved round 0 before it was stopped
            self._save(0, module)

    def after_round(self, round_: int, module: Any) -> None:
        if round_ in self.rounds:
            self._save(round_, module)


def contrastive(ctx: UnlearnContext):
    """Snapshot-anchored contrastive unlearning on the affected neighbourhood (module docstring)."""
    # the server's graph (DGL): imported here so that a process reading the registry does not load it
    from fedshare.graph.lightgcn import EdgeSampler, adam, bpr_loss
    from fedshare.graph.shared_graph import SharedGraph

    opts = ctx.options  # unlearn.contrastive (configs/config.yaml)
    steps, lr, tau = int(opts["steps"]), float(opts["lr"]), float(opts["tau"])
    retain, batch = float(opts["retain"]), int(opts["batch"])
    if ctx.snapshots is None:
        raise ValueError("contrastive unlearning needs the learning phase's snapshots (unlearn.snapshots)")
    old_graph = ctx.learned.server.graph
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
    later = [r for r in ctx.snapshots.rounds() if entered <= r <= ctx.rounds]  # none past the learned model's round
    snap = ctx.snapshots.load(before)
    hops = int(opts["hops"])
    aff_u, aff_i = old_graph.neighbourhood(ctx.users, ctx.items, hops)
    weight = _node_weights(old_graph, ctx.users, ctx.items, aff_u, aff_i, str(opts["weighting"]))
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
    gen = torch_generator(int(opts["seed"]), "unlearn-contrastive")
    # only the affected rows move: a fresh Adam moves every row with a gradient by about lr per
    # step, however small the gradient, and the rest of the graph owes nothing to the revoked edges
    frozen_u = torch.ones(graph.n_users, dtype=torch.bool)
    frozen_i = torch.ones(graph.n_items, dtype=torch.bool)
    movable = weight >= float(opts["min_weight"])  # nodes the revoked edges shaped enough
    frozen_u[aff_u[movable[: aff_u.numel()]]] = False
    frozen_i[aff_i[movable[aff_u.numel() :]]] = False
    optimizer = adam([server.user0, server.item0], lr)
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
        for _ in range(int(opts["q_steps"])):
            q_rows = server.item_emb.index_select(0, items).requires_grad_(True)
            with torch.enable_grad():
                align = info_nce_in_batch(zi.index_select(0, items), q_rows, server.tau).mean()
                (grad,) = torch.autograd.grad(server.lambda_cl * align, q_rows)
            server.item_emb.index_add_(0, items, grad, alpha=-server.q_align_lr)
    server.refresh_views()
    return model


WEIGHTINGS = ("influence", "uniform")


def _node_weights(
    graph: Any, users: Tensor, items: Tensor, aff_u: Tensor, aff_i: Tensor, weighting: str
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
