"""FedShare's two sides (DESIGN.md section 2), extending FedMF's clients and server.

- `FedShareClients`: FedMF clients, plus what sharing changes on the device: each client knows
  its shared part ``S_u`` and the round it starts sharing (it uploads ``S_u`` then), and a
  sharing client aligns its private row ``p_u`` with its global view ``z_u`` (InfoNCE) after
  every local epoch. Ranking fuses both: ``p_u.q_i + beta * z_u.z_i``; with ``beta_select``
  each sharing device picks its own ``beta_u`` on a held-out slice of its local data
  (`holdout_slice`), never on the validation or test split.
- `GraphServer`: FedAvg's item table ``Q``, plus the shared graph (shared edges only, with the
  round each entered), LightGCN layer-0 tables and the graph step: BPR on the shared edges and
  InfoNCE aligning the graph's item views with ``Q`` (both sides move).

What crosses the boundary each round: server -> clients: ``Q`` and a `ViewMessage` (views of
the sharing cohort clients, centroid negatives: means of many sharing users' views, with no
id; the item views);
clients -> server: an `Upload` (FedAvg sums), and ``S_u`` once, when a user starts sharing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from fedshare.data.interactions import UserCSR
from fedshare.federated.fedmf import FedAvgServer, FedMFClients
from fedshare.federated.losses import info_nce, info_nce_in_batch
from fedshare.federated.rounds import cohort_data
from fedshare.seeding import torch_generator

if TYPE_CHECKING:  # the graph (DGL) is the server's: a client-only process never imports it
    from fedshare.graph.lightgcn import EdgeSampler
    from fedshare.graph.shared_graph import SharedGraph


@dataclass(frozen=True)
class ViewMessage:
    """What the server sends with ``Q``: global views from its graph.

    ``users`` (sorted global ids) are the cohort clients that share, ``user_views`` their views
    ``z_u`` (row k is user ``users[k]``'s); ``pool`` holds the negatives of the alignment:
    centroids, each the mean of ``model.negatives_group`` random sharing users' views, with no
    ids (no device ever receives another user's id or view: DESIGN.md section 2);
    ``item_views`` are the graph's item views ``z_i`` (for fused ranking).
    """

    users: Tensor
    user_views: Tensor
    pool: Tensor
    item_views: Tensor

    @property
    def n_sharing(self) -> int:
        return int(self.users.numel())


def holdout_slice(train: UserCSR, shared: UserCSR, fraction: float, seed: int) -> np.ndarray:
    """Which entries of ``train`` (``D_u``) each sharing device keeps back to choose its own
    ``beta_u``: ``round(fraction * |L_u|)`` of its local (unshared) items ``L_u``, at most
    ``|L_u| - 1``; none for a user who shares nothing (no view, no ``beta_u``). Shared items
    are never held out: the graph was fit to them, so they would favour the view.

    The pick of each pair is a hash of ``(seed, user, item)``, not a stream of draws: a Flower
    node holding only its own users' rows holds out exactly what the in-process run does.
    Returns a bool mask over ``train``'s entries."""
    n_users, n_items = train.n_users, train.n_items
    users = train.users
    keys = users * n_items + train.items
    shared_keys = shared.users * n_items + shared.items
    local = ~np.isin(keys, shared_keys)
    n_local = np.bincount(users[local], minlength=n_users)
    n_hold = np.minimum(np.floor(fraction * n_local + 0.5).astype(np.int64), n_local - 1)
    n_hold = np.where(shared.degrees > 0, np.maximum(n_hold, 0), 0)
    # splitmix64 of the pair's key: a fixed pseudo-random order of each user's local items
    h = keys.astype(np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15) % (1 << 64))
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h = h ^ (h >> np.uint64(31))
    order = np.lexsort((h, ~local, users))  # by user, local items first, then by hash
    rank = np.arange(users.size) - train.indptr[users[order]]
    held = np.zeros(users.size, bool)
    held[order] = rank < n_hold[users[order]]
    return held


class FedShareClients(FedMFClients):
    def __init__(
        self,
        *args: Any,
        lambda_cl: float,
        tau: float,
        share_weighted: bool,
        beta_select: bool,
        beta_grid: list[float],
        beta_holdout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lambda_cl, self.tau, self.share_weighted = lambda_cl, tau, share_weighted
        if beta_select and not 0 < beta_holdout < 1:
            raise ValueError(f"model.beta_holdout must be in (0, 1) with model.beta_select, got {beta_holdout}")
        if beta_select and not beta_grid:
            raise ValueError("model.beta_grid must list at least one beta with model.beta_select")
        self.beta_select, self.beta_grid, self.beta_holdout = bool(beta_select), list(beta_grid), beta_holdout
        n_users = self.user_emb.shape[0]
        self.register_buffer("shared_indptr", torch.zeros(n_users + 1, dtype=torch.long), persistent=False)
        self.register_buffer("shared_items", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("share_start", torch.full((n_users,), -1, dtype=torch.long), persistent=False)
        self.register_buffer(
            "weight", torch.ones(n_users), persistent=False
        )  # lambda_u / lambda, beta_u / beta
        # beta_select: the held-out slice H_u of each device (`holdout_slice`), out of its training
        self.register_buffer("hold_indptr", torch.zeros(n_users + 1, dtype=torch.long), persistent=False)
        self.register_buffer("hold_items", torch.zeros(0, dtype=torch.long), persistent=False)

    def attach_data(self, train: UserCSR, shared: UserCSR | None = None, share_start=None) -> None:
        degrees = train.degrees
        if shared is not None and self.beta_select:
            held = holdout_slice(train, shared, self.beta_holdout, self.seed)
            hold = train.select(held)
            device = self.user_emb.device
            self.hold_indptr = torch.from_numpy(np.ascontiguousarray(hold.indptr)).to(device)
            self.hold_items = torch.from_numpy(np.ascontiguousarray(hold.items)).to(device)
            train = train.select(~held)
        super().attach_data(train)
        if shared is not None:
            device = self.user_emb.device
            self.shared_indptr = torch.from_numpy(np.ascontiguousarray(shared.indptr)).to(device)
            self.shared_items = torch.from_numpy(np.ascontiguousarray(shared.items)).to(device)
            self.share_start = torch.as_tensor(np.asarray(share_start), dtype=torch.long).to(device)
            if self.share_weighted:  # each user weighs the global view by its own sharing ratio |S_u|/|D_u|
                n_shared = self.shared_indptr.diff().to(self.weight.dtype)
                d_u = torch.from_numpy(np.asarray(degrees)).to(device=self.weight.device, dtype=self.weight.dtype)
                self.weight = n_shared / d_u.clamp_min(1)

    def unshare(self, users: Tensor, items: Tensor) -> None:
        """The client stops sharing these pairs: they stay in ``D_u`` as local-only data."""
        indptr, shared = self.shared_indptr, self.shared_items
        n_items = self.n_items
        owner = torch.repeat_interleave(torch.arange(indptr.numel() - 1, device=indptr.device), indptr.diff())
        keep = ~torch.isin(
            owner * n_items + shared, users.to(indptr.device) * n_items + items.to(indptr.device)
        )
        counts = torch.bincount(owner[keep], minlength=indptr.numel() - 1)
        self.shared_indptr = torch.cat([indptr.new_zeros(1), torch.cumsum(counts, 0)])
        self.shared_items = shared[keep]

    def shares_starting(self, round_: int) -> tuple[Tensor, Tensor]:
        """``(user, item)`` of ``S_u`` for every user who starts sharing at ``round_``."""
        users = torch.nonzero(self.share_start == round_).squeeze(1)
        counts = self.shared_indptr.index_select(0, users + 1) - self.shared_indptr.index_select(0, users)
        data = cohort_data(users, self.shared_indptr, self.shared_items)
        return torch.repeat_interleave(users, counts), data.items

    def fit(self, cohort: Tensor, item_table: Tensor, views: ViewMessage | None = None):
        """Local epochs of BPR on ``D_u``; sharing clients align ``p_u`` with ``z_u`` after each."""
        upload, sums = self.fit_sums(cohort, item_table, views)
        bpr = sums["bpr_sum"] / max(1, int(sums["bpr_steps"]))
        cl = sums["cl_sum"] / max(1, int(sums["cl_steps"]))
        return upload, {"bpr": bpr, "cl": cl}

    def fit_sums(self, cohort: Tensor, item_table: Tensor, views: ViewMessage | None = None):
        """`fit` with the losses as sums and counts (``bpr_sum``, ``bpr_steps``, ``cl_sum``,
        ``cl_steps``): what a node of a deployment reports, so the server's means over all
        nodes equal the in-process ones."""
        aligner, cl_losses = None, []
        if views is not None and views.n_sharing and self.lambda_cl > 0:

            def aligner(part: Tensor):
                return self._aligner(part, views, cl_losses)

        upload, bpr_sum, bpr_steps = self.fit_nodes(cohort, item_table, aligner)
        cl_sum = torch.stack(cl_losses).sum().cpu() if cl_losses else torch.zeros(())
        return upload, {
            "bpr_sum": bpr_sum,
            "bpr_steps": bpr_steps,
            "cl_sum": cl_sum,
            "cl_steps": len(cl_losses),
        }

    def _aligner(self, cohort: Tensor, views: ViewMessage, losses: list[Tensor]):
        """The alignment step: ``p_u -= lr * lambda_cl * grad InfoNCE(p_u, z_u; pool)``.

        Each client's loss depends on its own row only, so the summed loss's gradient is every
        client's own gradient (the per-client reference gives the same rows).
        """
        pos = torch.searchsorted(views.users, cohort).clamp_max(views.n_sharing - 1)
        view_row = torch.where(views.users.index_select(0, pos) == cohort, pos, -1)  # per cohort client
        step = self.lr * self.lambda_cl

        def align(p: Tensor, clients: Tensor) -> Tensor:
            rows = view_row.index_select(0, clients)
            sel = torch.nonzero(rows >= 0).squeeze(1)
            if sel.numel() == 0:
                return p
            rows = rows.index_select(0, sel)
            with torch.enable_grad():
                anchor = p.index_select(0, sel).detach().requires_grad_(True)
                loss = info_nce(anchor, views.user_views.index_select(0, rows), views.pool, self.tau)
                (grad,) = torch.autograd.grad(loss.sum(), anchor)
            losses.append(loss.detach().mean())
            w = self.weight.index_select(0, views.users.index_select(0, rows)).unsqueeze(1)
            return p.index_copy(0, sel, anchor.detach() - step * w * grad)

        return align

    def score(self, users: Tensor, item_table: Tensor, views: ViewMessage | None, beta: float):
        """``p_u.q_i``, plus ``beta_u * z_u.z_i`` for users holding a view (sharing users).

        ``beta_u = beta``, or ``beta * |S_u|/|D_u|`` with ``share_weighted`` (likewise the
        alignment's ``lambda_u``): a user who shares little has a thin global view. With
        ``beta_select`` a device holding a held-out slice uses its own pick (`_select_beta`)."""
        rows = self.user_emb.index_select(0, users)
        if views is None or (beta == 0 and not self.beta_select) or views.n_sharing == 0:
            return rows @ item_table.T
        pos = torch.searchsorted(views.users, users).clamp_max(views.n_sharing - 1)
        has = views.users.index_select(0, pos) == users
        w = self.weight.index_select(0, users)
        beta_u = torch.full_like(w, float(beta))
        z = views.user_views.index_select(0, pos)
        if self.beta_select:
            # the two products once: the pick reads them, and the fused score is their sum
            local, graph = rows @ item_table.T, z @ views.item_views.T
            beta_u = self._select_beta(users, local, graph, has, w, beta_u, float(beta))
            return local.add_(graph.mul_(torch.where(has, w * beta_u, 0.0).unsqueeze(1)))
        # One product of width 2d, [p_u, c_u z_u] . [q_i, z_i] with c_u = beta_u for a sharing
        # user and 0 otherwise: the same sum as two products, one pass over the [B, n_items] scores.
        z = z * torch.where(has, w * beta_u, 0.0).unsqueeze(1)
        return torch.cat([rows, z], dim=1) @ torch.cat([item_table, views.item_views], dim=1).T

    def _select_beta(self, users, local, graph, has, w, beta_u, beta: float) -> Tensor:
        """Each device's ``beta_u``: the value of ``beta_grid`` under which its held-out items
        ``H_u`` rank best (mean reciprocal rank among the items it has not trained on), ties to
        the value nearest ``beta``. Devices without a slice or a view keep ``beta``. Everything
        here is the device's own: its scores ``p_u.q_i`` (``local``) and ``z_u.z_i`` (``graph``),
        its items, and the tables all devices get."""
        hold = cohort_data(users, self.hold_indptr, self.hold_items)
        sel = torch.nonzero(has & (hold.degrees > 0)).squeeze(1)
        if sel.numel() == 0:
            return beta_u
        # the held-out entries of the selected rows, their owner renumbered within ``sel``
        slot = torch.full((users.numel(),), -1, dtype=torch.long, device=users.device)
        slot[sel] = torch.arange(sel.numel(), device=users.device)
        keep = slot.index_select(0, hold.owner) >= 0
        owner, items = slot.index_select(0, hold.owner[keep]), hold.items[keep]
        local, graph = local.index_select(0, sel), graph.index_select(0, sel)
        train = cohort_data(users.index_select(0, sel), self.train_indptr, self.train_items)
        local.index_put_((train.owner, train.items), torch.tensor(float("-inf"), dtype=local.dtype))
        grid = sorted(self.beta_grid, key=lambda g: abs(g - beta))  # argmax keeps the first best
        mrr = local.new_zeros(sel.numel(), len(grid))
        ws = w.index_select(0, sel).unsqueeze(1)
        for k, g in enumerate(grid):
            s = local + (ws * g) * graph
            target = s[owner, items]
            rank = (s.index_select(0, owner) > target.unsqueeze(1)).sum(1)
            mrr[:, k].index_add_(0, owner, 1.0 / (1.0 + rank.to(mrr.dtype)))
        picked = torch.tensor(grid, dtype=beta_u.dtype, device=beta_u.device)[mrr.argmax(1)]
        return beta_u.index_copy(0, sel, picked)


CLIENT_KEYS = (
    "dim",
    "init_std",
    "local_epochs",
    "batch_size",
    "lr",
    "reg",
    "lambda_cl",
    "tau",
    "share_weighted",
    "beta_select",
    "beta_grid",
    "beta_holdout",
)


def make_clients(n_users: int, init: torch.Generator, seed: int, nodes: int, **keys: Any) -> FedShareClients:
    """FedShare's client half as `FedShareModule` builds it (``keys``: `CLIENT_KEYS` of the
    model config; others are ignored). Its private rows are the first draws of ``init``: a
    Flower node that builds only this half, from a fresh "init" stream, holds the same rows."""
    k = {name: keys[name] for name in CLIENT_KEYS}
    return FedShareClients(
        n_users,
        k["dim"],
        init,
        k["init_std"],
        k["local_epochs"],
        k["batch_size"],
        k["lr"],
        k["reg"],
        seed,
        nodes=nodes,
        lambda_cl=k["lambda_cl"],
        tau=k["tau"],
        share_weighted=k["share_weighted"],
        beta_select=k["beta_select"],
        beta_grid=[float(g) for g in k["beta_grid"]],
        beta_holdout=float(k["beta_holdout"]),
    )


class GraphServer(FedAvgServer):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init: torch.Generator,
        init_std: float,
        server_lr: float,
        cohort_fraction: float,
        seed: int,
        *,
        layers: int,
        use_graph: bool,
        steps: int,
        batch_size: int,
        reg: float,
        lambda_cl: float,
        tau: float,
        q_align_lr: float,
        align_items: int,
        cl_negatives: int,
        align_graph: bool,
        negatives_group: int,
    ) -> None:
        super().__init__(n_users, n_items, dim, init, init_std, server_lr, cohort_fraction, seed)
        self.align_graph = align_graph
        self.layers = layers if use_graph else 0  # no graph: layer-0 tables only (MF on shared edges)
        self.steps, self.batch_size, self.reg = steps, batch_size, reg
        self.lambda_cl, self.tau, self.q_align_lr = lambda_cl, tau, q_align_lr
        self.align_items, self.cl_negatives = align_items, cl_negatives
        self.negatives_group = int(negatives_group)
        table_init = torch_generator(seed, "graph-init")  # its own stream: FedMF's draws stay the same
        self.user0 = nn.Parameter(torch.randn(n_users, dim, generator=table_init) * init_std)
        self.item0 = nn.Parameter(torch.randn(n_items, dim, generator=table_init) * init_std)
        self.register_buffer("user_view", torch.zeros(n_users, dim))
        self.register_buffer("item_view", torch.zeros(n_items, dim))
        # DGL: the server's; a client process never loads it
        from fedshare.graph.shared_graph import SharedGraph

        self.graph = SharedGraph(n_users, n_items)
        self.sampler: EdgeSampler | None = None
        self._sharing: Tensor | None = None
        self._is_sharing: Tensor | None = None  # [n_users] bool, with _sharing
        self.step_gen = torch_generator(seed, "server-step")
        self.pool_gen = torch_generator(seed, "view-pool")

    # ---- shared data -------------------------------------------------------------------------
    def receive_shares(self, users: Tensor, items: Tensor, round_: int) -> int:
        """Users who start sharing send ``S_u``: the edges enter the graph (and its log) now."""
        added = self.graph.add_edges(users, items, round_)
        if added:
            self.sampler, self._sharing = None, None
        return added

    def remove_shares(self, users: Tensor, items: Tensor) -> int:
        """Unsharing: the pairs leave the graph and its edge log (``ValueError`` if not there)."""
        removed = self.graph.remove_edges(users, items)
        if removed:
            self.sampler, self._sharing = None, None
        return removed

    def _on_device(self) -> SharedGraph:
        device = self.item_emb.device
        if self.graph.device != device:  # the graph is no nn.Module: it moves when first used
            self.graph = self.graph.to(device)
        return self.graph

    def sharing_users(self) -> Tensor:
        """Users with at least one edge in the graph (cached until the edges change)."""
        if self._sharing is None or self._sharing.device != self.item_emb.device:
            users, _ = self._on_device().edges()
            self._sharing = torch.unique(users).to(self.item_emb.device)
            self._is_sharing = torch.zeros(self.n_users, dtype=torch.bool, device=self.item_emb.device)
            self._is_sharing[self._sharing] = True
        return self._sharing

    # ---- the round -----------------------------------------------------------------------------
    def views(self, cohort: Tensor | None = None, pool: bool = True) -> ViewMessage | None:
        """Views for the sharing users of ``cohort`` (all if None); ``pool=False``: no negatives
        (ranking needs none, and drawing them would shift the training draws)."""
        sharing = self.sharing_users()
        if sharing.numel() == 0:
            return None
        if cohort is None:
            users = sharing
        else:  # the cohort's sharing users, sorted: one lookup per cohort user, not per sharing user
            users = torch.sort(cohort[self._is_sharing[cohort]]).values
        return ViewMessage(users, self.user_view.index_select(0, users), self._centroids(sharing, pool), self.item_view)

    def _centroids(self, sharing: Tensor, pool: bool) -> Tensor:
        """``cl_negatives`` means of ``negatives_group`` distinct sharing users each (a fresh
        random partition every round), and no ids: no device learns any single user's view."""
        g = self.negatives_group
        n_pool = min(self.cl_negatives, sharing.numel() // g) if pool else 0
        if n_pool == 0:
            return self.user_view[:0]
        order = torch.randperm(sharing.numel(), generator=self.pool_gen)[: n_pool * g]
        members = sharing.index_select(0, order.to(sharing.device))
        return self.user_view.index_select(0, members).view(n_pool, g, -1).mean(1)

    def configure_round(self) -> tuple[Tensor, Tensor, ViewMessage | None]:  # type: ignore[override]
        cohort, item_table = super().configure_round()
        return cohort, item_table, self.views(cohort)

    def graph_step(self, optimizer: torch.optim.Optimizer | None) -> dict[str, float]:
        """LightGCN-BPR on the shared edges plus ``lambda_cl * InfoNCE(z_i, Q_i)``; refreshes views.

        Each step's gradients are written by hand (:func:`fedshare.graph.lightgcn.bpr_step`:
        one forward and one backward propagation); the alignment's, on at most
        ``align_items`` rows, come from autograd."""
        if self.graph.n_edges == 0 or optimizer is None or self.steps == 0:
            return {}
        from fedshare.graph.lightgcn import EdgeSampler, bpr_step  # DGL: the server's, as above

        if self.sampler is None:
            self.sampler = EdgeSampler(self.graph)
        device = self.item_emb.device
        graph = self._on_device()
        totals = {"bpr": 0.0, "reg": 0.0, "align": 0.0}
        for _ in range(self.steps):
            users, pos, neg = (t.to(device) for t in self.sampler.sample(self.batch_size, self.step_gen))
            aligned: list[Tensor] = []
            extra = None
            if self.lambda_cl > 0:
                items = torch.unique(pos)
                if items.numel() > self.align_items:
                    keep = torch.randperm(items.numel(), generator=self.step_gen)[: self.align_items]
                    items = items.index_select(0, keep.to(device))

                def extra(out: Tensor, items: Tensor = items, aligned: list[Tensor] = aligned):
                    return self._align_rows(out, items, aligned)

            optimizer.zero_grad(set_to_none=True)
            bpr, l2 = bpr_step(graph, self.user0, self.item0, users, pos, neg, self.reg, self.layers, extra)
            optimizer.step()
            totals["bpr"] += float(bpr)
            totals["reg"] += float(l2)
            totals["align"] += float(aligned[0]) if aligned else 0.0
        self.refresh_views()
        return {k: v / self.steps for k, v in totals.items()}

    def _align_rows(self, out: Tensor, items: Tensor, aligned: list[Tensor]):
        """The server alignment ``lambda_cl * InfoNCE(z_i, Q_i)`` on ``items``: moves ``Q`` by
        SGD (``q_align_lr``) and returns the gradient rows it adds to the graph's output (none
        unless ``align_graph``). Appends the loss to ``aligned``."""
        with torch.enable_grad():
            q_rows = self.item_emb.index_select(0, items).requires_grad_(self.q_align_lr > 0)
            rows = items + self.n_users
            z_rows = out.index_select(0, rows).requires_grad_(self.align_graph)
            align = info_nce_in_batch(z_rows, q_rows, self.tau).mean()
            wrt = [t for t in (q_rows, z_rows) if t.requires_grad]
            grads = dict(zip(map(id, wrt), torch.autograd.grad(self.lambda_cl * align, wrt))) if wrt else {}
        aligned.append(align.detach())
        if id(q_rows) in grads:
            self.item_emb.index_add_(0, items, grads[id(q_rows)], alpha=-self.q_align_lr)
        return [(rows, grads[id(z_rows)])] if id(z_rows) in grads else []

    @torch.no_grad()
    def refresh_views(self) -> None:
        user_out, item_out = self._on_device().propagate(self.user0, self.item0, self.layers)
        self.user_view.copy_(user_out)
        self.item_view.copy_(item_out)

    # ---- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Tensor]:
        out = {k: v.detach() for k, v in self.named_buffers()}
        out.update({k: v.detach() for k, v in self.named_parameters()})
        graph = self.graph.state()
        out.update({f"graph.{k}": v for k, v in graph.items()})
        return out

    def load_graph_state(self, state: dict[str, Tensor]) -> None:
        from fedshare.graph.shared_graph import SharedGraph  # DGL: the server's, as above

        self.graph = SharedGraph.from_state(
            self.graph.n_users, self.graph.n_items, state, self.item_emb.device
        )
        self.sampler, self._sharing = None, None

    def generator_states(self) -> dict[str, Any]:
        return {
            **super().generator_states(),
            "step": self.step_gen.get_state(),
            "pool": self.pool_gen.get_state(),
        }

    def load_generator_states(self, states: dict[str, Any]) -> None:
        super().load_generator_states(states)
        if "step" in states:
            self.step_gen.set_state(states["step"])
        if "pool" in states:
            self.pool_gen.set_state(states["pool"])


def round_logs(
    module: Any,  # a FedShare module: .clients and .server
    sums: dict[str, Any],
    cohort: Tensor,
    views: Any,
    server_losses: dict[str, float],
    client_s: float,
    server_s: float,
) -> dict[str, float]:
    """A round's logged values, from the clients' loss sums (`FedShareClients.fit_sums`, summed
    over nodes on a deployment) and the server's step: the same keys in-process and on Flower."""
    bpr = float(sums["bpr_sum"]) / max(1, int(sums["bpr_steps"]))
    cl = float(sums["cl_sum"]) / max(1, int(sums["cl_steps"]))
    return {
        "train/bpr": bpr,
        "train/cl": cl,
        "train/loss": bpr + module.clients.lambda_cl * cl,
        "train/cohort": float(cohort.numel()),
        "train/sharing_cohort": float(views.n_sharing if views is not None else 0),
        "graph/edges": float(module.server.graph.n_edges),
        "time/client_s": client_s,
        "time/server_s": server_s,
        "time/round_s": client_s + server_s,
        **{f"server/{k}": v for k, v in server_losses.items()},
    }
