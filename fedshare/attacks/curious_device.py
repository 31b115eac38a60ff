"""A curious device: from exactly what it receives over a whole run, it ranks each other sharing
user's items and counts how many of that user's shared items land in its top K.

In-process, the simulator hands the whole cohort's views to the batched clients; what one device
receives is the part Flower's payload cuts for it (`fedshare.flower.payload.slice_views`): its own
view, the pool of negatives (centroids with no id) and the item views. `DeliveryTap` records that
part for one device every round and, beside it, what the alignment's negatives were before
issue 14: the ids and views of ``model.cl_negatives`` random other sharing users of the round
(``breach``; never sent, only drawn to measure the leak that design had, on the same run).
`attack` ranks items by ``v . z_i`` for each vector ``v`` that came with another user's id (the
last one received) and guesses at random for a user whose id never arrived (a centroid carries
no id, so nothing pins it on a user)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from fedshare.config import ConfigError
from fedshare.flower.payload import slice_views

K = 20  # precision@K of the attack: the page's K


def _cpu(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


@dataclass
class DeliveryTap(pl.Callback):
    """Records what ``device`` (None: the lowest id among the first round's sharing users)
    receives each round (``received``: ``view_users``, ``user_views``, ``pool``, ``item_views``),
    and the pre-issue-14 negatives it would have received too (``breach``: ``view_users``,
    ``user_views`` of other users)."""

    device: int | None = None
    seed: int = 0
    received: list[dict[str, torch.Tensor]] = field(default_factory=list)
    breach: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clients = pl_module.clients
        fit_sums = clients.fit_sums
        gen = torch.Generator().manual_seed(self.seed)
        negatives = int(pl_module.hparams.cl_negatives)

        def tapped(cohort, item_table, views=None):
            if views is not None:
                if self.device is None and views.users.numel():
                    self.device = int(views.users.min())
                mine = slice_views(views, views.users == self.device)
                self.received.append(
                    _cpu(view_users=mine.users, user_views=mine.user_views, pool=mine.pool, item_views=mine.item_views)
                )
                others = torch.nonzero(views.users != self.device).squeeze(1)
                pick = others[torch.randperm(others.numel(), generator=gen)[:negatives]]
                if not mine.users.numel():  # the device was not in this round's cohort
                    pick = pick[:0]
                self.breach.append(_cpu(view_users=views.users[pick], user_views=views.user_views[pick]))
            return fit_sums(cohort, item_table, views)

        clients.fit_sums = tapped


def attack(
    received: list[dict[str, torch.Tensor]], own: set[int], shared: dict[int, set[int]], n_items: int, seed: int = 0
) -> dict[str, float]:
    """Mean precision@K, over every sharing user not in ``own``, of the curious device's ranking
    (see the module), with the mean density of a random guess (``|S_u| / n_items``) and how many
    other users' ids arrived. ``received``: dicts with ``view_users`` and ``user_views``, the last
    one holding ``item_views``."""
    known: dict[int, torch.Tensor] = {}
    item_views = None
    for t in received:
        item_views = t.get("item_views", item_views)
        for uid, vec in zip(t["view_users"].tolist(), t["user_views"]):
            if uid not in own:
                known[uid] = vec
    rng = np.random.default_rng(seed)
    precision, density = [], []
    for u in sorted(u for u in shared if u not in own):
        if u in known:
            top = torch.topk(item_views @ known[u], K).indices.tolist()
        else:
            top = rng.choice(n_items, K, replace=False).tolist()
        precision.append(len(set(top) & shared[u]) / K)
        density.append(len(shared[u]) / n_items)
    return {
        f"precision@{K}": float(np.mean(precision)),
        "density": float(np.mean(density)),
        "ids_received": len(known),
        "users_attacked": len(precision),
    }


def shared_items(dm) -> dict[int, set[int]]:
    """Each sharing user's shared items, from the data module's shared edges."""
    out: dict[int, set[int]] = {}
    for u, i in dm.shared_edges.tolist():
        out.setdefault(int(u), set()).add(int(i))
    return out


def run(cfg: DictConfig) -> dict:
    """Trains ``cfg`` (a FedShare run) with a `DeliveryTap` on its first sharing device, then
    attacks what that device received (``private``) and what it would have received with the
    pre-issue-14 negatives (``breach``: the same deliveries plus those)."""
    from fedshare.run.inprocess import train  # the run driver, only for a run

    if cfg.model.name != "fedshare":
        raise ConfigError(f"the device attack needs a FedShare run (model.name=fedshare), got {cfg.model.name!r}")
    tap = DeliveryTap(seed=int(cfg.seed))
    _, objects = train(cfg, callbacks=[tap])
    dm, own = objects["datamodule"], {tap.device}
    shared, seed = shared_items(dm), int(cfg.seed)
    # the breach's views go before the round's own delivery: its item views stay the last ones
    with_breach = [x for pair in zip(tap.breach, tap.received) for x in pair]
    return {
        "device": tap.device,
        "rounds_received": len(tap.received),
        "private": attack(tap.received, own, shared, dm.n_items, seed),
        "breach": attack(with_breach, own, shared, dm.n_items, seed),
    }
