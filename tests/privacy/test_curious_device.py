"""A curious device: from exactly what it receives over a whole run, it tries to rank other
users' shared items (issue 14). With ``model.negatives=users`` every device receives 128 other
users' ids and global views, and the attack finds their shared items; with
``model.negatives=centroids`` it receives no user's id or view, and the attack is a random guess.
Both directions are tested, in-process and through the Flower apps (`MemoryGrid`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedshare.config import compose, save
from fedshare.federated.fedshare import FedShareClients
from fedshare.flower import apps
from fedshare.flower.node import DeliveryError, check_delivery
from fedshare.flower.payload import from_record, to_record
from fedshare.train import train
from tests.flower.test_flower import MemoryGrid

K = 20


def _cfg(tiny: tuple[str, ...], out: Path, negatives: str, *extra: str):
    return compose(
        [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=3", "logger=none"]
        + [f"model.negatives={negatives}", "model.negatives_group=4", "model.cl_negatives=8"]
        # sparse enough that a random guess is rare (about 2% of the items are a user's shared ones)
        + ["data.synthetic.n_items=1000", "data.synthetic.n_interactions=4000"]
        + [f"paths.output_dir={out}", *extra]
    )


def attack(received: list[dict[str, torch.Tensor]], own: set[int], shared: dict[int, set[int]], n_items: int):
    """Mean precision@20, over every other sharing user, of ranking items by ``v . z_i`` for each
    vector ``v`` received with that user's id (the last one received), and of a random guess for a
    user whose id never arrived; with the density of a random guess. ``received``: the view
    payloads (``view_users``, ``user_views``, ``pool``, ``pool_users``, ``item_views``)."""
    known: dict[int, torch.Tensor] = {}
    item_views = None
    for t in received:
        item_views = t["item_views"]
        for ids, vectors in ((t["view_users"], t["user_views"]), (t["pool_users"], t["pool"])):
            for uid, vec in zip(ids.tolist(), vectors):
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


def _in_process(tiny, tmp_path: Path, negatives: str, monkeypatch: pytest.MonkeyPatch):
    """What one sharing device (the first sharing user) receives each round in-process: its own
    slice of the round's views (as Flower's payload cuts it), the pool, the item views."""
    seen: list = []
    original = FedShareClients.fit_sums

    def spy(self, cohort, item_table, views=None):
        seen.append(views)
        return original(self, cohort, item_table, views)

    monkeypatch.setattr(FedShareClients, "fit_sums", spy)
    _, objects = train(_cfg(tiny, tmp_path / negatives, negatives))
    dm = objects["datamodule"]
    shared = _shared(dm)
    device = min(shared)
    received = []
    for v in seen:
        if v is None:
            continue
        mine = v.users == device
        received.append(
            {
                "view_users": v.users[mine],
                "user_views": v.user_views[mine],
                "pool": v.pool,
                "pool_users": v.pool_users,
                "item_views": v.item_views,
            }
        )
    out = attack(received, {device}, shared, dm.n_items)
    print(f"in-process, negatives={negatives}: precision@20 {out[0]:.3f}, density {out[1]:.4f}, ids {out[2]}")
    return out


def test_in_process_the_user_negatives_leak_and_the_centroids_do_not(tiny, tmp_path, monkeypatch) -> None:
    precision, density, known = _in_process(tiny, tmp_path, "users", monkeypatch)
    assert known > 0 and precision > 2 * density  # the breach is caught
    precision, density, known = _in_process(tiny, tmp_path, "centroids", monkeypatch)
    assert known == 0 and precision <= 2 * density


def _flower(tiny, tmp_path: Path, negatives: str, grids: dict | None = None):
    cfg = _cfg(tiny, tmp_path / f"flower-{negatives}", negatives, "fed.nodes=2")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    save(cfg, run_dir / "config.yaml")
    grid = MemoryGrid(2)
    apps.serve(grid, cfg, run_dir)  # every node checks what it receives (check_delivery)
    if grids is not None:
        grids[negatives] = grid
    from datamodules.federated import FederatedDataModule

    dm = FederatedDataModule(cfg)
    dm.setup()
    shared = _shared(dm)
    shard = 0
    own = {u for u in range(dm.n_users) if u % 2 == shard}
    print("flower", negatives)  # node 0 hosts users u % 2 == 0
    received = [
        from_record(content["views"]) for _, k, content in grid.sent if k == shard and "views" in content
    ]
    received = [t for t in received if "view_users" in t]
    assert received
    out = attack(received, own, shared, dm.n_items)
    print(f"Flower, negatives={negatives}: precision@20 {out[0]:.3f}, density {out[1]:.4f}, ids {out[2]}")
    return out


def test_on_flower_the_user_negatives_leak_and_the_centroids_do_not(tiny, tmp_path) -> None:
    grids: dict = {}
    precision, density, known = _flower(tiny, tmp_path, "users", grids)
    assert known > 0 and precision > 2 * density
    precision, density, known = _flower(tiny, tmp_path, "centroids", grids)
    assert known == 0 and precision <= 2 * density
    # the device-side guard: it passes every message of the centroid run, and catches the
    # user-negative payloads (other users' ids) and an id of another shard's user
    for _, k, content in grids["centroids"].sent:
        check_delivery(content, k, 2)
    leaky = [(k, c) for _, k, c in grids["users"].sent if "views" in c and from_record(c["views"]).get("pool_users", torch.zeros(0)).numel()]
    assert leaky
    for k, content in leaky:
        with pytest.raises(DeliveryError, match="other users' ids and views"):
            check_delivery(content, k, 2)
        check_delivery(content, k, 2, pool_ids=True)  # the mode that sends them by design
    k, content = next((k, c) for _, k, c in grids["centroids"].sent if "model" in c and "cohort" in c["model"])
    forged = RecordDict({**dict(content.items())})
    t = from_record(content["model"])
    t["cohort"] = torch.cat([t["cohort"], torch.tensor([1 - k], dtype=t["cohort"].dtype)])  # a user of the other shard
    forged["model"] = to_record(**t)
    with pytest.raises(DeliveryError, match="another shard's users"):
        check_delivery(forged, k, 2)


def test_a_centroid_is_the_mean_of_distinct_sharing_users(tiny, tmp_path) -> None:
    _, objects = train(_cfg(tiny, tmp_path / "c", "centroids", "fed.rounds=1", "eval.every=1"))
    server = objects["model"].server
    sharing = server.sharing_users()
    n = min(8, sharing.numel() // 4)
    assert n > 0
    gen = torch.Generator()
    gen.set_state(server.pool_gen.get_state())
    views = server.views()
    assert views.pool.shape == (n, server.user_view.shape[1]) and views.pool_users.numel() == 0
    order = torch.randperm(sharing.numel(), generator=gen)[: n * 4]
    members = sharing[order].view(n, 4)
    assert all(len(set(row.tolist())) == 4 for row in members)  # distinct users in each
    expected = server.user_view[members.reshape(-1)].view(n, 4, -1).mean(1)
    assert torch.allclose(views.pool, expected)
