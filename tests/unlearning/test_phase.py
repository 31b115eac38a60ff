"""Unsharing and unlearning end to end: requests, deletion, methods, judging, privacy, crashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedshare import train as train_mod
from fedshare import unlearn as unlearn_mod
from fedshare.config import ConfigError, compose
from fedshare.graph.shared_graph import SharedGraph
from fedshare.unlearning import registry
from fedshare.unlearning.judge import auc, forget_hits
from fedshare.unlearning.phase import ENV_KILL_AT_REQUEST
from fedshare.unlearning.requests import read_requests_csv
from tests.helpers.wandb_log import offline_log

ROOT = Path(__file__).resolve().parents[2]
METHODS = list(registry.METHODS)


@pytest.fixture(scope="module")
def base(tiny: list[str]) -> list[str]:
    """A tiny learn -> unshare -> unlearn setting."""
    return [
        *tiny,
        "fed.rounds=6",
        "eval.every=3",
        "logger=none",
        "unlearn.snapshots=3",
        "unlearn.requests.user_fraction=0.2",
        "unlearn.finetune.rounds=2",
    ]


@pytest.fixture(scope="module")
def run(base: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny learn -> unshare -> unlearn run with every available method."""
    folder = tmp_path_factory.mktemp("unlearn") / "run"
    train_mod.train(compose([*base, f"unlearn.methods=[{','.join(METHODS)}]", f"paths.output_dir={folder}"]))
    return folder


def _revoked(run_dir: Path, n_users: int = 60, n_items: int = 120) -> set[tuple[int, int]]:
    requests = read_requests_csv(run_dir / "unlearn" / "devices" / "revoked.csv", n_users, n_items)
    return {(r.user, i) for r in requests for i in r.items}


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- what a run reports ------------------------------------------------------------------------


def test_every_method_reports_every_key(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unlearn/revoked_pairs"] == len(_revoked(run)) > 0
    for method in METHODS:
        for key in (
            "test/recall@20",
            "test/ndcg@20",
            "revoking/recall@20",
            "revoking/ndcg@20",
            "forget/hit@20",
            "mia/auc",
            "time_s",
            "storage_bytes",
        ):
            value = metrics[f"unlearn/{method}/{key}"]
            assert np.isfinite(value), (method, key)
        assert metrics[f"unlearn/{method}/time_s"] > 0
    for key in ("test/recall@20", "revoking/recall@20", "forget/hit@20", "mia/auc"):
        assert f"learn/{key}" in metrics
    # the learned model trained on the revoked edges: the server scores them above test pairs
    assert metrics["learn/mia/auc"] > 0.7
    assert metrics["learn/forget/hit@20"] > metrics["unlearn/retrain/forget/hit@20"]
    snapshots = run / "unlearn" / "contrastive" / "snapshots"
    on_disk = sum(p.stat().st_size for p in snapshots.rglob("*") if p.is_file())
    assert metrics["unlearn/contrastive/storage_bytes"] == on_disk > 0  # nothing rewrote them
    assert metrics["unlearn/retrain/storage_bytes"] == 0
    # the methods that train select on validation (every 3 rounds, the last included)
    learned = metrics["best_round"]
    assert metrics["unlearn/retrain/best_round"] in (3, 6)
    assert metrics["unlearn/finetune/best_round"] in (learned, learned + 2)
    # the baselines keep update histories: far more than a few snapshots
    assert metrics["unlearn/fru/storage_bytes"] > metrics["unlearn/contrastive/storage_bytes"]
    assert metrics["unlearn/fedEraser/storage_bytes"] > 0
    assert (run / "unlearning_before_after.png").stat().st_size > 0
    assert (run / "unlearning_storage.png").stat().st_size > 0


def test_snapshots_are_kept_at_the_configured_rounds(run: Path) -> None:
    manifest = json.loads((run / "unlearn" / "contrastive" / "snapshots" / "manifest.json").read_text())
    assert [e["round"] for e in manifest["snapshots"]] == [0, 3, 6]


# -- privacy: no revoked pair in any server-side file ------------------------------------------


def _pairs_in(obj, found: set[tuple[int, int]]) -> None:
    """Collects (user, item) pairs from [n, 2] integer tensors and 'user'/'items' records."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype in (torch.int64, torch.int32) and obj.dim() == 2 and obj.shape[1] == 2:
            found.update(map(tuple, obj.tolist()))
    elif isinstance(obj, dict):
        if "user" in obj and isinstance(obj.get("items"), list):
            found.update((int(obj["user"]), int(i)) for i in obj["items"])
        for value in obj.values():
            _pairs_in(value, found)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _pairs_in(value, found)


def server_side_pairs(run_dir: Path) -> set[tuple[int, int]]:
    """Every pair a server-side file of the run names (the devices' own folder excluded)."""
    found: set[tuple[int, int]] = set()
    for path in run_dir.rglob("*"):
        if not path.is_file() or "devices" in path.relative_to(run_dir).parts:
            continue
        if path.suffix == ".ckpt":
            _pairs_in(torch.load(path, map_location="cpu", weights_only=False), found)
        elif path.suffix == ".safetensors":
            tensors = load_file(path)
            _pairs_in(tensors, found)
            if {"clients", "indptr", "items"} <= set(tensors):  # per-client rows (fedEraser's store)
                owner = torch.repeat_interleave(tensors["clients"], tensors["indptr"].diff())
                found.update(zip(owner.tolist(), tensors["items"].tolist()))
        elif path.suffix in (".json", ".jsonl"):
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
                _pairs_in(json.loads(line), found)
        elif path.suffix == ".csv":
            rows = [r.split(",") for r in path.read_text().splitlines()[1:] if r.strip()]
            found.update((int(u), int(i)) for u, i in rows)
    return found


def test_no_revoked_pair_remains_in_any_server_file(run: Path) -> None:
    revoked = _revoked(run)
    assert revoked
    assert not (server_side_pairs(run) & revoked)
    # the scan sees pairs where they are: the graph's shared edges, and the devices' own record
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["unlearned"] and ckpt["server_graph"]["edges"].shape[0] > 0
    # snapshots hold embedding tables only: no edge travels with them (W&B artifacts included)
    snap = load_file(run / "unlearn" / "contrastive" / "snapshots" / "snapshot-r00006.safetensors")
    assert sorted(snap) == ["item0", "item_emb", "user0"]


def test_the_scan_sees_a_pair_put_back_into_a_server_file(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path)
    user, item = sorted(_revoked(folder))[0]
    ckpt_path = folder / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    edges = ckpt["server_graph"]["edges"]
    ckpt["server_graph"]["edges"] = torch.cat([edges, torch.tensor([[user, item]])])
    torch.save(ckpt, ckpt_path)
    assert (user, item) in server_side_pairs(folder)


# -- the deletion itself -------------------------------------------------------------------------


def test_unshare_leaves_the_server_and_keeps_the_pairs_local(base: list[str], tmp_path: Path) -> None:
    _, objects = train_mod.train(
        compose([*base, "fed.rounds=1", "unlearn.methods=[]", f"paths.output_dir={tmp_path / 'r'}"])
    )
    model = objects["model"]
    users, items = model.server.graph.edges()
    pick = torch.tensor([0, 3, 5])
    u, i = users[pick], items[pick]
    before_train = model.clients.train_items.clone()
    n_shared = model.clients.shared_items.numel()
    assert model.unshare(u, i) == 3
    assert not model.server.graph.has_edges(u, i).any()
    assert model.clients.shared_items.numel() == n_shared - 3
    assert torch.equal(model.clients.train_items, before_train)  # the device keeps them as local data
    owner = torch.repeat_interleave(torch.arange(60), model.clients.shared_indptr.diff())
    still = set(zip(owner.tolist(), model.clients.shared_items.tolist()))
    assert not still & set(zip(u.tolist(), i.tolist()))
    with pytest.raises(ValueError, match="not in the graph"):
        model.unshare(u[:1], i[:1])


# -- judging -----------------------------------------------------------------------------------


def test_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    members = torch.randint(0, 5, (40,), generator=gen).float()
    others = torch.randint(0, 5, (30,), generator=gen).float()
    diff = members.unsqueeze(1) - others.unsqueeze(0)
    brute = float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
    assert auc(members, others) == pytest.approx(brute)
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([2.0])) == 0.0


def test_forget_hits_counts_revoked_items_in_the_server_top_k() -> None:
    graph = SharedGraph(2, 6)
    graph.add_edges([0, 0, 1], [0, 1, 2], round=1)
    # user 0 scores items 0 > 1 > 2 > 3 > 4 > 5
    user_view = torch.tensor([[1.0], [1.0]])
    item_view = torch.tensor([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0]])
    module = SimpleNamespace(server=SimpleNamespace(user_view=user_view, item_view=item_view, graph=graph))
    # revoked (0, 1) is still in the graph here, item 0 (kept) is masked: top-1 of user 0 is item 1
    assert forget_hits(module, torch.tensor([0]), torch.tensor([1]), k=1) == 1.0
    assert forget_hits(module, torch.tensor([0]), torch.tensor([4]), k=1) == 0.0
    assert forget_hits(module, torch.tensor([0, 0]), torch.tensor([1, 4]), k=2) == 0.5


# -- requests from a file ----------------------------------------------------------------------


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize(
    "body, message",
    [
        ("user,item\n1,2\nseven,3\n", r"req\.csv:3"),
        ("user,item\n999,1\n", r"req\.csv:2.*unknown user 999"),
        ("user,item\n", None),
    ],
)
def test_a_bad_request_file_names_the_line_and_changes_nothing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, body: str, message: str | None
) -> None:
    folder = _copy(run, tmp_path)
    csv = tmp_path / "req.csv"
    body = body if message else _never_shared_body(folder)
    csv.write_text(body)
    before = _hashes(folder)
    code = unlearn_mod.main([f"run_dir={folder}", f"requests={csv}", "method=delete_only"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(message or r"req\.csv:2.*never shared", err), err
    assert _hashes(folder) == before


def _never_shared_body(folder: Path) -> str:
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    shared = {tuple(e) for e in ckpt["server_graph"]["edges"].tolist()} | _revoked(folder)
    user = 0
    item = next(i for i in range(120) if (user, i) not in shared)
    return f"user,item\n{user},{item}\n"


def _tree(folder: Path) -> dict[str, tuple[str, int, str]]:
    """Every folder and file under ``folder``: kind, size, sha256 (empty for folders)."""
    return {
        str(p.relative_to(folder)): (
            ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file()
            else ("dir", 0, "")
        )
        for p in sorted(folder.rglob("*"))
    }


def test_a_refused_request_file_leaves_a_learning_only_run_as_it_was(
    tiny: list[str],
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No ledger, no unlearn/ folder: a refused file must not create them (nor anything else)."""
    folder = tmp_path / "run"
    learn = [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=3", "logger=none"]
    train_mod.train(compose([*learn, "unlearn.methods=[]", f"paths.output_dir={folder}"]))
    assert not (folder / "unlearn").exists()
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    shared = {tuple(e) for e in ckpt["server_graph"]["edges"].tolist()}
    user, item = next((u, i) for u in range(60) for i in range(120) if (u, i) not in shared)
    before = _tree(folder)
    for body, message in [
        ("user,item\n1,2\n3;4\n", r"bad\.csv:3"),  # a malformed line
        (f"user,item\n{user},{item}\n", r"bad\.csv:2.*never shared"),  # a pair never shared
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        code = unlearn_mod.main([f"run_dir={folder}", f"requests={bad}", "method=delete_only"])
        assert code == 2
        assert re.search(message, capsys.readouterr().err)
        assert _tree(folder) == before  # byte for byte: no new file, no new folder


def test_requests_from_a_file_then_a_repeat_is_a_no_op(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path)
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    u, i = ckpt["server_graph"]["edges"][0].tolist()
    csv = tmp_path / "req.csv"
    csv.write_text(f"user,item\n{u},{i}\n")
    before_metrics = json.loads((folder / "metrics.json").read_text())
    assert unlearn_mod.main([f"run_dir={folder}", f"requests={csv}", "method=delete_only"]) == 0
    # the new session's keys replace the first session's whole; those are kept aside
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["unlearn/revoked_pairs"] == 1 and "unlearn/retrain/mia/auc" not in metrics
    assert metrics["test/recall@20"] == before_metrics["test/recall@20"]  # the learning phase's own
    kept = json.loads((folder / "unlearn" / "sessions" / "1.json").read_text())
    assert kept["unlearn/retrain/mia/auc"] == before_metrics["unlearn/retrain/mia/auc"]
    after = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (u, i) not in {tuple(e) for e in after["server_graph"]["edges"].tolist()}
    assert (u, i) in _revoked(folder)
    ledger = (folder / "unlearn" / "ledger.jsonl").read_text()
    assert unlearn_mod.main([f"run_dir={folder}", f"requests={csv}", "method=delete_only"]) == 0
    assert (folder / "unlearn" / "ledger.jsonl").read_text() == ledger  # nothing new recorded
    assert not (server_side_pairs(folder) & _revoked(folder))


# -- a crash between two requests --------------------------------------------------------------


def test_a_crash_between_requests_resumes_with_each_applied_once(base: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    args = [*base, "unlearn.methods=[contrastive,delete_only]", "unlearn.requests.user_fraction=0.3"]
    env = {**os.environ, "DGLBACKEND": "pytorch", ENV_KILL_AT_REQUEST: "3", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "fedshare.train", *args, f"paths.output_dir={folder}"]
    killed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    lines = [json.loads(x) for x in (folder / "unlearn" / "ledger.jsonl").read_text().splitlines()]
    requests = [e for e in lines if e["kind"] == "request"]
    assert len(requests) >= 3
    assert sorted(e["id"] for e in lines if e["kind"] == "applied") == [0, 1]  # killed before the third

    env.pop(ENV_KILL_AT_REQUEST)
    done = subprocess.run(
        [sys.executable, "-m", "fedshare.unlearn", f"run_dir={folder}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in (folder / "unlearn" / "ledger.jsonl").read_text().splitlines()]
    applied = sorted(e["id"] for e in lines if e["kind"] == "applied" and e["method"] == "server")
    assert applied == sorted(e["id"] for e in requests)  # every request, exactly once
    revoked = {(e["user"], i) for e in requests for i in e["items"]}
    assert revoked == _revoked(folder)
    assert not (server_side_pairs(folder) & revoked)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["unlearn/revoked_pairs"] == len(revoked)
    assert "unlearn/contrastive/mia/auc" in metrics and "test/recall@20" in metrics


# -- config --------------------------------------------------------------------------------------


def test_unlearn_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="lists a method twice"):
        compose(["unlearn.methods=[fru,fru]"])
    with pytest.raises(ConfigError, match="unlearn.methods: unknown method 'bogus'"):
        compose(["unlearn.methods=[bogus]"])
    with pytest.raises(ConfigError, match="needs model=fedshare"):
        compose(["model=fedmf"])


def test_wandb_gets_the_comparison_table_and_charts(base: list[str], tmp_path: Path, _isolated_home: Path) -> None:
    folder = tmp_path / "run"
    args = [*base, "logger=wandb", "logger.mode=offline", "unlearn.methods=[contrastive,delete_only]"]
    train_mod.train(compose([*args, f"paths.output_dir={folder}"]))
    keys = [b"unlearn/comparison", b"unlearn/chart/", b"unlearn/contrastive/mia/auc", b"snapshots"]
    blob = offline_log(folder, keys)
    for key in keys:
        assert key in blob, key


def test_a_bad_request_file_in_the_config_stops_before_training(base: list[str], tmp_path: Path, capsys) -> None:
    csv = tmp_path / "req.csv"
    csv.write_text("user,item\n1,x\n")
    folder = tmp_path / "run"
    args = [*base, "unlearn.methods=[delete_only]", f"unlearn.requests.file={csv}", f"paths.output_dir={folder}"]
    assert train_mod.main(args) == 2
    assert re.search(r"req\.csv:2", capsys.readouterr().err)
    assert not folder.exists()  # nothing was trained or written
