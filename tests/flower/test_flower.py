"""FedShare on Flower: the strategy and the apps without processes, then the real deployment.

The fast tests run the real ServerApp loop (`serve`) and the real ClientApp handlers through an
in-memory grid: each node keeps its own ``Context`` as a SuperNode does. The end-to-end tests
(marked by their names) start a SuperLink and two SuperNodes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from safetensors.torch import load_file

from fedshare.config import compose, save
from fedshare.federated.rounds import Upload
from fedshare.flower import apps
from fedshare.flower.launch import compose_args, join_checkpoints
from fedshare.flower.node import Node, NodeConfigError, node_data
from fedshare.flower.payload import to_record, upload_from, upload_record
from fedshare.flower.strategy import FedShareStrategy, ReplyError, check_reply
from fedshare.run.build import new_model
from fedshare.train import train
from tests.helpers.wandb_log import offline_log


class MemoryGrid:
    """Flower's Grid, in this process: a message goes straight to the ClientApp with the node's
    own ``Context`` (kept between messages, as a SuperNode keeps it). ``sent`` is every message
    the server pushed (group, shard, content), ``received`` every reply it got; ``drop`` maps a
    shard to the round from which its node is gone."""

    def __init__(self, n: int, drop: dict[int, int] | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
        self.contexts = {
            100 + k: Context(1, 100 + k, {"shard": k, "num-shards": n}, RecordDict(), {}) for k in range(n)
        }
        self.sent: list[tuple[str, int, RecordDict]] = []
        self.received: list[tuple[str, RecordDict]] = []
        self.replies: dict[str, Message] = {}
        self.drop = drop or {}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for n, m in enumerate(messages):
            shard = m.metadata.dst_node_id - 100
            group = m.metadata.group_id
            m.metadata.__dict__["_message_id"] = f"{group}-{shard}-{n}"  # the SuperLink sets it
            ids.append(m.metadata.message_id)
            self.sent.append((group, shard, m.content))
            if shard in self.drop and (
                group == "test" or group.isdigit() and int(group) >= self.drop[shard]
            ):
                continue  # the node is gone: no reply, ever
            try:
                reply = apps.client_app(m, self.contexts[m.metadata.dst_node_id])
            except Exception as ex:  # as Flower's ClientApp runner: an error reply
                reply = Message(Error(code=1, reason=f"{type(ex)}:<'{ex}'>"), reply_to=m)
            if not reply.has_error():
                self.received.append((m.metadata.message_type, reply.content))
            self.replies[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def _cfg(tiny: list[str], out: Path, *extra: str):
    return compose(
        [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=2", "fed.nodes=2", "logger=none"]
        + [f"paths.output_dir={out}", *extra]
    )


def _serve(cfg, grid) -> dict[str, float]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    save(cfg, run_dir / "config.yaml")
    return apps.serve(grid, cfg, run_dir)


def _close(a: dict[str, float], b: dict[str, float], tol: float) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys if k not in a or k not in b or abs(a[k] - b[k]) > tol
    ]


def test_flower_apps_equal_the_in_process_run(tiny: list[str], tmp_path: Path) -> None:
    cfg = _cfg(tiny, tmp_path / "inproc")
    expected, _ = train(cfg)
    got = _serve(_cfg(tiny, tmp_path / "flower"), MemoryGrid(2))
    assert not _close(expected, got, 1e-6)
    assert json.loads((tmp_path / "flower" / "history.json").read_text()) == json.loads(
        (tmp_path / "inproc" / "history.json").read_text()
    )
    assert (tmp_path / "flower" / "checkpoints" / "server.ckpt").is_file()


def test_a_round_is_one_message_per_node_even_with_validation_due(tiny: list[str], tmp_path: Path) -> None:
    """A SuperNode starts a process per message and idles 3 s between polls, so validations get
    no messages of their own: with eval.every=1, round r's validation rides on round r+1's
    training message, and every number is the in-process run's, to the last bit. The last
    round's validation gets one message of its own (the test needs the round it selects), and
    the test message ends the nodes' part."""
    expected, objects = train(_cfg(tiny, tmp_path / "inproc", "eval.every=1"))
    grid = MemoryGrid(2)
    for ctx in grid.contexts.values():
        ctx.node_config["out-dir"] = str(tmp_path / "nodes")
    got = _serve(_cfg(tiny, tmp_path / "flower", "eval.every=1"), grid)
    assert got == expected
    history = json.loads((tmp_path / "flower" / "history.json").read_text())
    assert history == json.loads((tmp_path / "inproc" / "history.json").read_text())
    assert [h["round"] for h in history["val"]] == [1, 2, 3]

    per_group = Counter(group for group, _, _ in grid.sent)
    assert per_group == {"setup": 2, "1": 2, "2": 2, "3": 2, "validate": 2, "test": 2}
    assert Counter((group, shard) for group, shard, _ in grid.sent).most_common(1)[0][1] == 1
    for group, shard, content in grid.sent:
        config = content["config"]
        if group in ("2", "3"):  # the validation of the round before rides on it
            assert config["validate"] == "valid" and "val_model" in content and "val_views" in content
            assert config["val_round"] == int(group) - 1  # the nodes keep its rows (model selection)
        else:
            assert "validate" not in config
        if group == "validate":
            assert config["split"] == "valid" and config["val_round"] == 3
        if group == "2":  # what validation adds is what the message holds already: sent once
            assert content["val_model"]["q"].object_id == content["model"]["q"].object_id
            assert content["val_views"]["item_views"].object_id == content["views"]["item_views"].object_id
        for name in ("views", "val_views"):  # a node gets only its own users' views, as before
            if name in content:
                users = content[name]["view_users"].numpy()
                assert (users % 2 == shard).all()
    # the test message ended the nodes' part: each wrote its clients' rows, the last round's
    # (those of the in-process last.ckpt; the test used the selected round's)
    assert all(bool(c["config"].get("finish")) == (g == "test") for g, _, c in grid.sent)
    last = torch.load(tmp_path / "inproc" / "checkpoints" / "last.ckpt", weights_only=False)
    rows = last["state_dict"]["clients.user_emb"]
    for k in range(2):
        t = load_file(str(tmp_path / "nodes" / f"clients-{k}.safetensors"))
        assert torch.equal(t["user_emb"], rows[t["users"].long()]) and (t["users"] % 2 == k).all()


def test_early_stopping_selects_the_in_process_round(tiny: list[str], tmp_path: Path) -> None:
    """eval.patience on Flower: the stop is known a round later (the validation rides on the next
    round), yet the run counts, selects and tests what the in-process run does."""
    more = ("fed.rounds=8", "eval.every=1", "eval.patience=1")
    expected, _ = train(_cfg(tiny, tmp_path / "inproc", *more))
    assert expected["rounds_done"] < 8 and expected["best_round"] < expected["rounds_done"]  # it stopped early
    grid = MemoryGrid(2)
    for ctx in grid.contexts.values():
        ctx.node_config["out-dir"] = str(tmp_path / "flower" / "flower" / "nodes")
    cfg = _cfg(tiny, tmp_path / "flower", *more)
    got = _serve(cfg, grid)
    assert got == expected
    history = json.loads((tmp_path / "flower" / "history.json").read_text())
    assert history == json.loads((tmp_path / "inproc" / "history.json").read_text())
    # the selected round is saved as in-process: best.ckpt (server state + the nodes' rows of that round)
    joined = join_checkpoints(tmp_path / "flower", cfg)
    assert [p.name for p in joined] == ["last.ckpt", "best.ckpt"]
    ours = torch.load(tmp_path / "flower" / "checkpoints" / "best.ckpt", weights_only=False)
    ref = torch.load(tmp_path / "inproc" / "checkpoints" / "best.ckpt", weights_only=False)
    assert ours["global_step"] == expected["best_round"]
    for key, value in ref["state_dict"].items():
        assert torch.allclose(ours["state_dict"][key], value, atol=1e-6), key
    # the stop is known after the next round trained: last.ckpt is that round's, and says so
    last = torch.load(tmp_path / "flower" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == expected["rounds_done"] + 1


def test_nodes_draw_their_own_streams(tiny: list[str], tmp_path: Path) -> None:
    """fed.nodes changes the draws (each node has its own stream), not the model: a run's
    numbers depend on it, which is why the Flower run is compared with the same fed.nodes."""
    _, one = train(_cfg(tiny, tmp_path / "one", "fed.nodes=1"))
    _, two = train(_cfg(tiny, tmp_path / "two", "fed.nodes=2"))
    rows_one, rows_two = one["model"].clients.user_emb, two["model"].clients.user_emb
    assert not torch.allclose(rows_one, rows_two)
    assert (
        one["model"].clients.round_gens[0].get_state().equal(two["model"].clients.round_gens[0].get_state())
        is False
    )


def _shared_pairs(cfg) -> set[tuple[int, int]]:
    from datamodules.federated import FederatedDataModule

    dm = FederatedDataModule(cfg)
    dm.setup()
    return set(map(tuple, dm.shared_edges.tolist())), dm


def _pairs_in(content: RecordDict) -> set[tuple[int, int]]:
    if "shares" not in content:
        return set()
    t = {k: v.numpy() for k, v in content["shares"].items()}
    return set(zip(t["users"].tolist(), t["items"].tolist()))


def _kind(content: RecordDict) -> str:
    if "upload" in content or "losses" in content:
        return "train"
    return "evaluate" if "metric" in content else "setup"


def test_server_never_receives_unshared_interactions(tiny: list[str], tmp_path: Path) -> None:
    cfg = _cfg(tiny, tmp_path / "run", "sharing=segments")
    grid = MemoryGrid(2)
    _serve(cfg, grid)
    shared, dm = _shared_pairs(cfg)
    received = set().union(*(_pairs_in(c) for _, c in grid.received))
    assert received and received <= shared  # shared pairs only, each as its user starts sharing
    started = {(u, i) for u, i in shared if dm.share_start[u] <= int(cfg.fed.rounds)}
    assert received == started
    local = set(zip(dm.local.users.tolist(), dm.local.items.tolist()))
    assert local and not (received & local)
    for _, content in grid.received:  # and nothing but the protocol's records
        check_reply(_kind(content), content)


def test_the_scan_catches_a_node_that_sends_local_data(tiny: list[str], tmp_path: Path, monkeypatch) -> None:
    """The companion of the test above: a node that uploads its local data is caught."""

    def leaky(self, round_):
        local = self.data.train.select(np.ones(len(self.data.train.items), bool))
        users, items = local.users, local.items
        return (
            to_record(users=users, items=items)
            if round_ == 1
            else to_record(users=users[:0], items=items[:0])
        )

    monkeypatch.setattr(Node, "_shares", leaky)
    cfg = _cfg(tiny, tmp_path / "run")
    grid = MemoryGrid(2)
    try:
        _serve(cfg, grid)
    except ValueError:  # the graph may refuse a pair given twice; what arrived is scanned anyway
        pass
    shared, _ = _shared_pairs(cfg)
    received = set().union(*(_pairs_in(c) for _, c in grid.received))
    assert received and not received <= shared


def test_a_reply_with_more_than_the_protocol_stops_the_run() -> None:
    content = RecordDict({"losses": ConfigRecord({"bpr_sum": 1.0}), "local": to_record(items=np.arange(3))})
    with pytest.raises(ReplyError, match="local"):
        check_reply("train", content)
    with pytest.raises(ReplyError, match="rows_of_user"):
        check_reply("train", RecordDict({"upload": to_record(rows=np.arange(2), rows_of_user=np.arange(2))}))


def test_a_lost_node_is_skipped_and_the_run_finishes(tiny: list[str], tmp_path: Path, capsys) -> None:
    got = _serve(_cfg(tiny, tmp_path / "run", "flower.round_timeout=0.2"), MemoryGrid(2, drop={1: 2}))
    assert got["flower/lost_shard/1"] == 2.0
    assert 0 < got["test/recall@20"] <= 1
    assert "shard 1 lost in train 2" in capsys.readouterr().out


def test_setup_refuses_a_wrong_node_config(tiny: list[str], tmp_path: Path) -> None:
    grid = MemoryGrid(2)
    for ctx in grid.contexts.values():
        ctx.node_config["num-shards"] = 3
    with pytest.raises(apps.FlowerRunError, match="num-shards=3"):
        _serve(_cfg(tiny, tmp_path / "run"), grid)


# ---- the strategy, alone ---------------------------------------------------------------------------
def test_upload_travels_sparse_and_exact() -> None:
    g = torch.Generator().manual_seed(0)
    delta = torch.zeros(10, 4)
    weight = torch.zeros(10)
    rows = torch.tensor([1, 4, 7])
    delta[rows] = torch.randn(3, 4, generator=g)
    weight[rows] = torch.tensor([2.0, 1.0, 5.0])
    record = upload_record(Upload(delta, weight))
    assert record["rows"].numpy().tolist() == [1, 4, 7]
    back = upload_from(record, 10, 4)
    assert torch.equal(back.delta_sum, delta) and torch.equal(back.weight_sum, weight)


def test_configure_fit_sends_each_node_only_its_clients_and_views(tiny: list[str], tmp_path: Path) -> None:
    cfg = _cfg(tiny, tmp_path / "run", "fed.cohort_fraction=0.5")
    module = new_model(cfg, 60, 120)
    strategy = FedShareStrategy(cfg, module)
    module.server.receive_shares(torch.tensor([0, 1, 2, 3, 5]), torch.tensor([4, 5, 6, 7, 8]), 1)
    module.server.refresh_views()
    contents = strategy.configure_fit(1, [0, 1])
    cohort = strategy._round["cohort"]
    for k, content in contents.items():
        model = {n: a.numpy() for n, a in content["model"].items()}
        assert set(model["cohort"].tolist()) == {u for u in cohort.tolist() if u % 2 == k}
        assert model["q"].shape == (120, module.server.item_emb.shape[1])
        views = {n: a.numpy() for n, a in content["views"].items()}
        assert all(u % 2 == k for u in views["view_users"].tolist())  # only its own users' views
        assert set(views["view_users"].tolist()) == {
            u for u in (0, 1, 2, 3, 5) if u in cohort.tolist() and u % 2 == k
        }


def test_aggregate_fit_adds_replies_in_shard_order_and_runs_the_graph_step(
    tiny: list[str], tmp_path: Path
) -> None:
    cfg = _cfg(tiny, tmp_path / "run")
    module = new_model(cfg, 60, 120)
    strategy = FedShareStrategy(cfg, module)
    strategy.configure_fit(1, [0, 1])
    q0 = module.server.item_emb.clone()
    d = module.server.item_emb.shape[1]
    replies = {}
    for k in (1, 0):
        delta, weight = torch.zeros(120, d), torch.zeros(120)
        delta[k] = 1.0 + k
        weight[k] = 1.0
        replies[k] = RecordDict(
            {
                "upload": upload_record(Upload(delta, weight)),
                "losses": ConfigRecord({"bpr_sum": 2.0, "bpr_steps": 4, "cl_sum": 0.0, "cl_steps": 0}),
                "shares": to_record(users=np.array([k]), items=np.array([10 + k])),
            }
        )
    logs = strategy.aggregate_fit(replies)
    lr = module.server.server_lr
    assert torch.allclose(module.server.item_emb[0], q0[0] + lr * 1.0)
    assert torch.allclose(module.server.item_emb[1], q0[1] + lr * 2.0)
    assert torch.equal(module.server.item_emb[2:], q0[2:])
    assert logs["train/bpr"] == pytest.approx(0.5)
    strategy.configure_fit(2, [0, 1])  # the shares sent in round 1 enter at round 2
    users, items = module.server.graph.edges()
    assert users.tolist() == [0, 1] and items.tolist() == [10, 11]


def test_node_keeps_only_its_own_users(tiny: list[str], tmp_path: Path) -> None:
    from datamodules.federated import FederatedDataModule

    cfg = _cfg(tiny, tmp_path / "run")
    dm = FederatedDataModule(cfg)
    dm.setup()
    data = node_data(dm, 1, 2)  # a data module, or a fedshare.data.sharing.Partition
    for name in ("train", "valid", "test", "shared"):
        users = getattr(data, name).users
        assert len(users) and (users % 2 == 1).all()
    assert (data.share_start[::2] == -1).all()


def test_relative_paths_are_made_absolute_for_the_apps(tiny: list[str], tmp_path: Path, monkeypatch) -> None:
    from fedshare.flower.launch import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(_cfg(tiny, tmp_path / "run", "data.root=data", "unlearn.requests.file=req.csv"))
    assert cfg.data.root == str(tmp_path / "data") and cfg.unlearn.requests.file == str(tmp_path / "req.csv")
    assert cfg.fed.nodes == 2 and cfg.choices.experiment == "fedshare"


def test_compose_args_maps_nodes_and_defaults_to_learning() -> None:
    assert compose_args(["nodes=3", "data=ml-100k"]) == ["experiment=fedshare", "fed.nodes=3", "data=ml-100k"]
    assert compose_args(["experiment=fedshare_unlearn"]) == ["experiment=fedshare_unlearn"]


def test_a_node_config_without_shard_is_a_clear_error(tiny: list[str], tmp_path: Path) -> None:
    from fedshare.flower.node import shard_from

    cfg = _cfg(tiny, tmp_path / "run")
    with pytest.raises(NodeConfigError, match="shard=0 num-shards=2"):
        shard_from({}, cfg)


# ---- the deployment: SuperLink + 2 SuperNodes on 127.0.0.1 ------------------------------------------------
def test_connection_is_written_into_flwr_home(tiny: list[str], tmp_path: Path) -> None:
    from fedshare.flower.launch import FlowerLaunch

    local = FlowerLaunch(_cfg(tiny, tmp_path / "a"), tmp_path / "a")
    toml = (tmp_path / "a" / "flower" / "home" / "config.toml").read_text()
    assert 'default = "fedshare"' in toml and 'address = "127.0.0.1:' in toml and "insecure = true" in toml
    assert local.env["FLWR_HOME"] == str(tmp_path / "a" / "flower" / "home")
    assert local.env["TMPDIR"] == str(tmp_path / "a" / "flower" / "tmp")
    # the ServerApp (under the SuperLink) gets a node's share of the cores, not the whole machine
    assert local.server_env["OMP_NUM_THREADS"] == local.threads == str(max(1, (os.cpu_count() or 1) // 2))
    for key in (
        "FLWR_TELEMETRY_ENABLED",
        "FLWR_DISABLE_UPDATE_CHECK",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION",
    ):
        assert local.env[key] in ("0", "1")
    cfg = _cfg(
        tiny,
        tmp_path / "b",
        "flower.superlink=linkhost:9092",
        "flower.tls=true",
        "flower.root_certificates=/etc/ca.crt",
    )
    remote = FlowerLaunch(cfg, tmp_path / "b")
    remote.start()  # an external SuperLink: nothing is started here
    assert remote.procs == []
    toml = (tmp_path / "b" / "flower" / "home" / "config.toml").read_text()
    assert 'address = "linkhost:9092"' in toml and "insecure = false" in toml
    assert 'root-certificates = "/etc/ca.crt"' in toml


def test_unlearning_on_the_nodes_equals_the_in_process_phase(tiny: list[str], tmp_path: Path) -> None:
    """Contrastive unlearning and plain deletion on Flower: the server unlearns on its own
    tables, the nodes move the pairs to their local data and judge; same numbers as in-process."""
    extra = ("unlearn.methods=[contrastive,delete_only]", "unlearn.contrastive.steps=10")
    expected, _ = train(_cfg(tiny, tmp_path / "inproc", *extra))
    grid = MemoryGrid(2)
    got = _serve(_cfg(tiny, tmp_path / "flower", *extra), grid)
    got = json.loads((tmp_path / "flower" / "metrics.json").read_text())
    timing = [k for k in expected if k.endswith("/time_s")]
    assert timing and any(k.startswith("unlearn/contrastive/") for k in got)
    assert not _close(
        {k: v for k, v in expected.items() if k not in timing},
        {k: v for k, v in got.items() if k not in timing},
        1e-5,
    )
    # the devices moved the pairs to their local data, and the server's files hold none of them
    users, items = (torch.tensor(c) for c in zip(*[(u, i) for u, i in _revoked(tmp_path / "flower")]))
    for ctx in grid.contexts.values():
        node = Node.from_context(ctx)
        shared = node.clients.shared_items
        owner = torch.repeat_interleave(torch.arange(node.data.n_users), node.clients.shared_indptr.diff())
        assert not torch.isin(owner * node.data.n_items + shared, users * node.data.n_items + items).any()
    state = torch.load(tmp_path / "flower" / "checkpoints" / "server.ckpt", weights_only=False)
    edges = state["server_graph"]["edges"]
    assert state["unlearned"] and not torch.isin(edges[:, 0] * 1000 + edges[:, 1], users * 1000 + items).any()


def _revoked(run_dir: Path) -> list[tuple[int, int]]:
    from fedshare.unlearning.phase import device_record

    lines = device_record(run_dir).read_text().splitlines()[1:]
    return [tuple(int(x) for x in line.split(",")) for line in lines]


def test_a_flower_run_is_logged_to_wandb_offline(tiny: list[str], tmp_path: Path) -> None:
    from fedshare.flower.launch import log_to_wandb

    extra = ("logger=wandb", "logger.mode=offline", "unlearn.methods=[contrastive]", "unlearn.contrastive.steps=5")
    cfg = _cfg(tiny, tmp_path / "run", *extra)
    metrics = _serve(cfg, MemoryGrid(2))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    log_to_wandb(cfg, tmp_path / "run", metrics)
    keys = [b"test/recall@20", b"val/recall@20", b"unlearn/comparison", b"flower/nodes"]
    blob = offline_log(tmp_path / "run", keys)
    for key in keys:
        assert key in blob, key


def test_flower_benchmark_prints_both_round_times(tiny: list[str], monkeypatch, capsys) -> None:
    """The benchmark's plumbing, with the launch going through the in-memory grid (the real
    launch is what the end-to-end tests run; the benchmark's figures come from real runs)."""
    from fedshare import bench
    from fedshare.flower import launch as launcher

    def launch_in_memory(cfg, command=None):
        return _serve(cfg, MemoryGrid(int(cfg.fed.nodes)))

    monkeypatch.setattr(launcher, "launch", launch_in_memory)
    assert bench.main(["flower", *tiny, "nodes=2", "bench.repeats=2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "flower" and result["nodes"] == 2 and result["rounds"] == 2
    assert result["flower_round_s"] > 0 and result["inprocess_round_s"] > 0
    assert len(result["flower_round_all_s"]) == 2 and 0 < result["flower_test_recall@20"] <= 1


def test_a_busy_port_is_a_clear_error_before_anything_starts(tiny: list[str], tmp_path: Path) -> None:
    import socket

    from fedshare.flower.launch import FlowerLaunch, LaunchError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port\\(s\\) \\[{port}\\] are in use"):
            FlowerLaunch(_cfg(tiny, tmp_path / "run", f"flower.port={port}"), tmp_path / "run")
