"""A curious device: from exactly what it receives over a whole run, it tries to rank other
users' shared items (issue 14). A device receives its own users' views, centroids of many users'
views as the alignment's negatives (no id) and the item views: the attack is a random guess.
The breach direction is tested too: in-process a device that also gets the pre-issue-14 negatives
(other users' ids and views, `DeliveryTap.breach`), on Flower a server that sends every
sharing user's view (its per-node slicing skipped): the same attack finds other users' shared
items, and the device-side guard (`check_delivery`) refuses the Flower breach. The attack itself
is `fedshare.attacks.curious_device` (also ``python -m fedshare.attack device``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from fedshare.attack import main as attack_main
from fedshare.attacks import curious_device
from fedshare.attacks.curious_device import attack, shared_items
from fedshare.config import compose, save
from fedshare.flower import apps, node, payload, strategy
from fedshare.flower.node import DeliveryError, check_delivery
from fedshare.flower.payload import from_record, to_record
from fedshare.train import train
from tests.flower.test_flower import MemoryGrid


def _cfg(tiny: tuple[str, ...], out: Path, *extra: str):
    return compose(
        [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=3", "logger=none"]
        + ["model.negatives_group=4", "model.cl_negatives=8"]
        # sparse enough that a random guess is rare (about 2% of the items are a user's shared ones)
        + ["data.synthetic.n_items=1000", "data.synthetic.n_interactions=4000"]
        + [f"paths.output_dir={out}", *extra]
    )


def _leaky_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The breach: a server that skips the per-node slicing sends every sharing user's view."""
    monkeypatch.setattr(payload, "slice_views", lambda views, keep, pool=True: views)
    monkeypatch.setattr(strategy, "slice_views", payload.slice_views)


def test_in_process_a_device_learns_no_other_user_and_the_attack_catches_a_leak(tiny, tmp_path) -> None:
    """What the first sharing device receives each round in-process (`DeliveryTap`: its part of
    the round's views, cut as Flower's payload cuts them), attacked; and with the pre-issue-14
    negatives (other users' ids and views) on the same run."""
    out = curious_device.run(_cfg(tiny, tmp_path / "r"))
    print(f"in-process: {out}")
    private, breach = out["private"], out["breach"]
    assert out["rounds_received"] == 3 and private["users_attacked"] > 10
    assert private["ids_received"] == 0 and private["precision@20"] <= 2 * private["density"]
    assert breach["ids_received"] > 0 and breach["precision@20"] > 2 * breach["density"]  # the breach is caught


def test_the_attack_command_prints_its_result_and_refuses_a_run_without_views(tiny, tmp_path, capsys) -> None:
    args = [*tiny, "fed.rounds=2", "eval.every=2", "logger=none", f"paths.output_dir={tmp_path / 'r'}"]
    assert attack_main(["device", "model.negatives_group=4", *args]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["private"]["ids_received"] == 0 and last["breach"]["ids_received"] > 0
    assert attack_main(["device", "experiment=fedmf", *args]) == 2
    assert "needs a FedShare run" in capsys.readouterr().err
    assert attack_main(["nothing"]) == 2


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
    shared = shared_items(dm)
    shard = 0  # node 0 hosts users u % 2 == 0
    own = {u for u in range(dm.n_users) if u % 2 == shard}
    received = [
        from_record(content["views"]) for _, k, content in grid.sent if k == shard and "views" in content
    ]
    received = [t for t in received if "view_users" in t]
    assert received
    out = attack(received, own, shared, dm.n_items)
    print(f"Flower, leaky={leaky}: {out}")
    return (out["precision@20"], out["density"], out["ids_received"], grid)


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
