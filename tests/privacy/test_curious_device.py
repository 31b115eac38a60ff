"""A curious device: from exactly what it receives over a whole run, it tries to rank other
users' shared items (issue 14). A device receives its own users' views, centroids of many users'
views as the alignment's negatives (no id) and the item views: the attack is a random guess.
The breach direction is tested too: a server that sends every sharing user's view (its
per-node slicing skipped) lets the same attack find other users' shared items, and the
device-side guard (`check_delivery`) refuses it. In-process and through the Flower apps
(`MemoryGrid`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedshare.config import compose, save
from fedshare.federated.fedshare import FedShareClients
from fedshare.flower import apps, node, payload, strategy
from fedshare.flower.node import DeliveryError, check_delivery
from fedshare.flower.payload import from_record, to_record
from fedshare.train import train
from tests.flower.test_flower import MemoryGrid

K = 20


def _cfg(tiny: tuple[str, ...], out: Path, *extra: str):
    return compose(
        [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=3", "logger=none"]
        + ["model.negatives_group=4", "model.cl_negatives=8"]
        # sparse enough that a random guess is rare (about 2% of the items are a user's shared ones)
        + ["data.synthetic.n_items=1000", "data.synthetic.n_interactions=4000"]
        + [f"paths.output_dir={out}", *extra]
    )


def attack(received: list[dict[str, torch.Tensor]], own: set[int], shared: dict[int, set[int]], n_items: int):
    """Mean precision@20, over every other sharing user, of ranking items by ``v . z_i`` for each
    vector ``v`` received with that user's id (the last one received), and of a random guess for a
    user whose id never arrived; with the density of a random guess. ``received``: the view
    payloads (``view_users``, ``user_views``, ``pool``, ``item_views``); the pool's centroids
    carry no id, so no pool vector can be pinned on a user."""
    known: dict[int, torch.Tensor] = {}
    item_views = None
    for t in received:
        item_views = t["item_views"]
        for uid, vec in zip(t["view_users"].tolist(), t["user_views"]):
            if uid not in own:
                known[uid] = vec
    rng = np.random.default_rng(0)
    targets = sorted(u for u in shared if u not in own)
    precision, density = [], []
    for u in targets:
        if u in known:
            top = torch.topk(item_views @ known[u], K).indices.tolist()
        else:
            top = rng.choice(n_items, K, replace=False).tolist()
        precision.append(len(set(top) & shared[u]) / K)
        density.append(len(shared[u]) / n_items)
    return float(np.mean(precision)), float(np.mean(density)), len(known)


def _shared(dm) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in dm.shared_edges.tolist():
        out.setdefault(int(u), set()).add(int(i))
    return out


def _leaky_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The breach: a server that skips the per-node slicing sends every sharing user's view."""
    monkeypatch.setattr(payload, "slice_views", lambda views, keep, pool=True: views)
    monkeypatch.setattr(strategy, "slice_views", payload.slice_views)


def _in_process(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaky: bool = False):
    """What one sharing device (the first sharing user) receives each round in-process: its part
    of the round's views, cut as Flower's payload cuts them (`payload.slice_views`)."""
    seen: list = []
    original = FedShareClients.fit_sums

    def spy(self, cohort, item_table, views=None):
        seen.append(views)
        return original(self, cohort, item_table, views)

    monkeypatch.setattr(FedShareClients, "fit_sums", spy)
    if leaky:
        _leaky_slicing(monkeypatch)
    _, objects = train(_cfg(tiny, tmp_path / ("leaky" if leaky else "private")))
    dm = objects["datamodule"]
    shared = _shared(dm)
    device = min(shared)
    received = []
    for v in seen:
        if v is None:
            continue
        mine = payload.slice_views(v, v.users == device)
        received.append(
            {"view_users": mine.users, "user_views": mine.user_views, "pool": mine.pool, "item_views": mine.item_views}
        )
    out = attack(received, {device}, shared, dm.n_items)
    print(f"in-process, leaky={leaky}: precision@20 {out[0]:.3f}, density {out[1]:.4f}, ids {out[2]}")
    return out


def test_in_process_a_device_learns_no_other_user_and_the_attack_catches_a_leak(tiny, tmp_path, monkeypatch) -> None:
    precision, density, known = _in_process(tiny, tmp_path, monkeypatch)
    assert known == 0 and precision <= 2 * density
    with monkeypatch.context() as m:
        precision, density, known = _in_process(tiny, tmp_path, m, leaky=True)
    assert known > 0 and precision > 2 * density  # the breach is caught


def _flower(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaky: bool = False):
    cfg = _cfg(tiny, tmp_path / ("flower-leaky" if leaky else "flower"), "fed.nodes=2")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    save(cfg, run_dir / "config.yaml")
    grid = MemoryGrid(2)
    if leaky:  # the guard would stop the run at the first message: let the device record it all
        _leaky_slicing(monkeypatch)
        monkeypatch.setattr(node, "check_delivery", lambda content, shard, nodes: None)
    apps.serve(grid, cfg, run_dir)  # otherwise every node checks what it receives (check_delivery)
    from datamodules.federated import FederatedDataModule

    dm = FederatedDataModule(cfg)
    dm.setup()
    shared = _shared(dm)
    shard = 0  # node 0 hosts users u % 2 == 0
    own = {u for u in range(dm.n_users) if u % 2 == shard}
    received = [
        from_record(content["views"]) for _, k, content in grid.sent if k == shard and "views" in content
    ]
    received = [t for t in received if "view_users" in t]
    assert received
    out = attack(received, own, shared, dm.n_items)
    print(f"Flower, leaky={leaky}: precision@20 {out[0]:.3f}, density {out[1]:.4f}, ids {out[2]}")
    return (*out, grid)


def test_on_flower_a_device_learns_no_other_user_and_the_guard_refuses_a_leak(tiny, tmp_path, monkeypatch) -> None:
    precision, density, known, grid = _flower(tiny, tmp_path, monkeypatch)
    assert known == 0 and precision <= 2 * density
    for _, k, content in grid.sent:  # the device-side guard passes every message of the run
        check_delivery(content, k, 2)
    with monkeypatch.context() as m:
        precision, density, known, leaky_grid = _flower(tiny, tmp_path, m, leaky=True)
    assert known > 0 and precision > 2 * density  # the attack catches the leak
    leaked = [(k, c) for _, k, c in leaky_grid.sent if "views" in c and "view_users" in from_record(c["views"])]
    assert leaked
    for k, content in leaked:  # and the guard refuses every message of it
        with pytest.raises(DeliveryError, match="another shard's users"):
            check_delivery(content, k, 2)

    # forged messages: ids beside the negatives, a view without its user, another shard's user
    k, content = next((k, c) for _, k, c in grid.sent if "views" in c and "view_users" in from_record(c["views"]))
    t = from_record(content["views"])
    for forged_views, message in (
        ({**t, "pool_users": torch.tensor([1 - k])}, "pool_users"),
        ({**t, "user_views": torch.cat([t["user_views"], t["user_views"][:1]])}, "without its own user's id"),
    ):
        forged = RecordDict({**dict(content.items())})
        forged["views"] = to_record(**forged_views)
        with pytest.raises(DeliveryError, match=message):
            check_delivery(forged, k, 2)
    k, content = next((k, c) for _, k, c in grid.sent if "model" in c and "cohort" in c["model"])
    forged = RecordDict({**dict(content.items())})
    t = from_record(content["model"])
    t["cohort"] = torch.cat([t["cohort"], torch.tensor([1 - k], dtype=t["cohort"].dtype)])  # a user of the other shard
    forged["model"] = to_record(**t)
    with pytest.raises(DeliveryError, match="another shard's users"):
        check_delivery(forged, k, 2)


def test_a_centroid_is_the_mean_of_distinct_sharing_users(tiny, tmp_path) -> None:
    _, objects = train(_cfg(tiny, tmp_path / "c", "fed.rounds=1", "eval.every=1"))
    server = objects["model"].server
    sharing = server.sharing_users()
    n = min(8, sharing.numel() // 4)
    assert n > 0
    gen = torch.Generator()
    gen.set_state(server.pool_gen.get_state())
    views = server.views()
    assert views.pool.shape == (n, server.user_view.shape[1])
    order = torch.randperm(sharing.numel(), generator=gen)[: n * 4]
    members = sharing[order].view(n, 4)
    assert all(len(set(row.tolist())) == 4 for row in members)  # distinct users in each
    expected = server.user_view[members.reshape(-1)].view(n, 4, -1).mean(1)
    assert torch.allclose(views.pool, expected)
