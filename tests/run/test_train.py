"""End to end: the real configs, shrunk, run under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedshare import train as train_mod
from fedshare.config import available, compose
from fedshare.run import inprocess
from tests.helpers.privacy import unshared_pairs
from tests.helpers.wandb_log import offline_log


@pytest.mark.parametrize("experiment", [None, *available("experiment")])
def test_every_experiment_runs_under_fast_dev_run(
    experiment: str | None, tiny: list[str], tmp_path: Path
) -> None:
    overrides = [*tiny, "debug=fdr", f"paths.output_dir={tmp_path / 'run'}"]
    if experiment:
        overrides.append(f"experiment={experiment}")
    metrics, _ = train_mod.train(compose(overrides))
    assert 0.0 <= metrics["test/recall@20"] <= 1.0
    assert "test/ndcg@20" in metrics and "test/hr@10" in metrics


def test_a_run_writes_config_metrics_checkpoint_and_offline_wandb(
    tiny: list[str], tmp_path: Path, _isolated_home: Path
) -> None:
    run = tmp_path / "run"
    cfg = compose([*tiny, "fed.rounds=3", "eval.every=1", f"paths.output_dir={run}"])
    metrics, objects = train_mod.train(cfg)

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["fed"]["rounds"] == 3 and saved["choices"]["data"] == "synthetic"

    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert all(isinstance(v, float) for v in on_disk.values())  # flat: key -> number
    for key in ("test/recall@10", "test/recall@20", "test/ndcg@20", "test/hr@20", "val/recall@20"):
        assert key in on_disk
    groups = objects["datamodule"].group_names
    assert all(f"test/recall@20/share={g}" in on_disk for g in groups)

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2  # written at the end of round 3 (Lightning counts epochs from 0)
    assert [h["round"] for h in ckpt["history"]["val"]] == [1, 2, 3]
    assert torch.equal(ckpt["state_dict"]["server.item_emb"], objects["model"].server.item_emb)
    assert "generators" in ckpt

    assert list((run / "wandb").glob("offline-run-*")), "the W&B run must be written, offline, inside the run folder"
    assert not any(_isolated_home.rglob("*wandb*")), "W&B wrote into the home folder"
    # per round: losses by term, validation, shared edges, client/server time; at the end the group table
    keys = (
        "train/bpr",
        "train/cl",
        "server/bpr",
        "server/align",
        "graph/edges",
        "time/client_s",
        "time/server_s",
        "val/recall@20",
        "test/by_share_group",
        "sharing/ratio",
    )
    blob = offline_log(run, [key.encode() for key in keys])
    for key in keys:
        assert key.encode() in blob, key


def test_same_seed_same_metrics(tiny: list[str], tmp_path: Path) -> None:
    base = [*tiny, "fed.rounds=2", "logger=none", "fed.cohort_fraction=0.5"]
    a, _ = train_mod.train(compose([*base, f"paths.output_dir={tmp_path / 'a'}"]))
    b, _ = train_mod.train(compose([*base, f"paths.output_dir={tmp_path / 'b'}"]))
    c, _ = train_mod.train(compose([*base, "seed=1", f"paths.output_dir={tmp_path / 'c'}"]))
    assert a == b
    assert a != c


def test_fedmf_learns_more_than_popularity(tmp_path: Path) -> None:
    """On the synthetic default (communities), a trained FedMF must beat ranking by popularity."""
    common = ["logger=none", "trainer.enable_progress_bar=false", "eval.every=1000"]
    fedmf, _ = train_mod.train(compose([*common, "experiment=fedmf", "fed.rounds=25", f"paths.output_dir={tmp_path / 'f'}"]))
    pop, _ = train_mod.train(
        compose([*common, "experiment=popularity", f"paths.output_dir={tmp_path / 'p'}"])
    )
    assert fedmf["test/recall@20"] > 1.3 * pop["test/recall@20"]


def test_server_holds_no_unshared_interaction(tiny: list[str], tmp_path: Path) -> None:
    _, objects = train_mod.train(
        compose([*tiny, "fed.rounds=1", "logger=none", f"paths.output_dir={tmp_path}"])
    )
    dm, model = objects["datamodule"], objects["model"]
    assert unshared_pairs(model.server_state(), dm.shared_edges, dm.n_items) == {}
    # the check itself must catch a leak: a store holding local-only pairs
    local = np.stack([dm.local.users, dm.local.items], axis=1)
    leaky = {**model.server_state(), "interactions": torch.from_numpy(local)}
    assert unshared_pairs(leaky, dm.shared_edges, dm.n_items) == {"interactions": len(local)}
    assert unshared_pairs({"edges": torch.from_numpy(dm.shared_edges)}, dm.shared_edges, dm.n_items) == {}


def test_main_stops_on_a_config_error_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = train_mod.main(["fed.roundz=3", f"paths.output_dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fed.roundz" in err and "cohort_fraction" in err
    assert not (tmp_path / "run").exists()


def test_an_earlier_run_is_never_overwritten(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    train_mod.train(compose([*tiny, "debug=fdr", f"paths.output_dir={run}"]))
    before = {p.name: p.read_bytes() for p in run.glob("*.json")} | {
        "config": (run / "config.yaml").read_bytes()
    }
    assert train_mod.main([*tiny, "debug=fdr", "seed=5", f"paths.output_dir={run}"]) == 2
    assert "already holds a run" in capsys.readouterr().err

    after = {p.name: p.read_bytes() for p in run.glob("*.json")} | {
        "config": (run / "config.yaml").read_bytes()
    }
    assert before == after


def test_interrupted_run_reports_no_metrics(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pytorch_lightning.callbacks import Callback

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    original = inprocess.RoundProgressBar
    inprocess.RoundProgressBar = CtrlC  # the progress-bar slot is the one extra callback
    try:
        code = train_mod.main(
            [
                *tiny,
                "fed.rounds=5",
                "logger=none",
                "trainer.enable_progress_bar=true",
                f"paths.output_dir={tmp_path / 'run'}",
            ]
        )
    finally:
        inprocess.RoundProgressBar = original
    assert code == 130
    assert "stopped by the user" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_help_lists_groups(capsys: pytest.CaptureFixture) -> None:
    assert train_mod.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "experiment" in out and "popularity" in out and "ml-100k" in out


def test_main_explains_a_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = train_mod.main(
        [
            "data=ml-100k",
            f"data.root={tmp_path / 'data'}",
            "data.download.url=null",
            "logger=none",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "u.data" in err and str(tmp_path / "data" / "ml-100k") in err
    assert not (tmp_path / "run").exists()


def test_main_names_file_and_line_of_a_malformed_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t4\t881250950\n3\tabc\t4\t881250951\n")
    code = train_mod.main(
        [
            "data=ml-100k",
            f"data.root={tmp_path / 'data'}",
            "logger=none",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "u.data" in err and "line 3" in err
    assert not (tmp_path / "run").exists()  # no half-written run folder


def test_real_format_end_to_end(tmp_path: Path) -> None:
    """A LightGCN-format dataset on disk, its own split, through the whole job."""
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "train.txt", "w") as f_train, open(folder / "test.txt", "w") as f_test:
        for u in range(30):
            items = rng.choice(50, size=12, replace=False)
            f_train.write(" ".join(map(str, [u, *items[:9]])) + "\n")
            f_test.write(" ".join(map(str, [u, *items[9:]])) + "\n")
    overrides = [
        "data=gowalla",
        "data.name=toy",
        f"data.root={tmp_path / 'data'}",
        "data.download.url=null",
        "data.download.sha256=null",
        "logger=none",
        "fed.rounds=2",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    metrics, objects = train_mod.train(compose(overrides))
    assert objects["datamodule"].n_users == 30
    assert "test/recall@20" in metrics


def test_learning_curve_on_test_for_data_without_validation(tiny: list[str], tmp_path: Path) -> None:
    """eval.curve=true on data without a validation split: test metrics every N rounds; the
    last point is the final test evaluation of the same model."""
    common = [*tiny, "data.split.ratios=[0.9,0.0,0.1]", "fed.rounds=4", "eval.every=2", "logger=none"]
    metrics, objs = train_mod.train(
        compose([*common, "eval.curve=true", f"paths.output_dir={tmp_path / 'c'}"])
    )
    curve = objs["model"].history["val"]
    assert [h["round"] for h in curve] == [2, 4]
    assert curve[-1]["curve/test/recall@20"] == pytest.approx(metrics["test/recall@20"], abs=1e-6)
    assert not any(k.startswith("val/") for k in metrics)
    plain, objs = train_mod.train(compose([*common, f"paths.output_dir={tmp_path / 'p'}"]))
    assert objs["model"].history["val"] == []  # default: no validation split, no curve
    assert plain["test/recall@20"] == metrics["test/recall@20"]  # watching the curve changes nothing


def test_history_file_checkpoint_every_and_max_time(tiny: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [*tiny, "logger=none", "eval.every=2"]
    metrics, _ = train_mod.train(
        compose([*base, "fed.rounds=5", "checkpoint.every=2", f"paths.output_dir={run}"])
    )
    history = json.loads((run / "history.json").read_text())["val"]
    assert [h["round"] for h in history] == [2, 4]
    assert history[-1]["val/recall@20"] == pytest.approx(metrics["val/recall@20"])
    assert metrics["rounds_done"] == 5.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 4  # the last round is always written, whatever checkpoint.every says

    # a wall-time budget of zero: training stops after its first round, then the test runs
    short, _ = train_mod.train(
        compose([*base, "fed.rounds=5", "trainer.max_time=00:00:00:00", f"paths.output_dir={tmp_path / 's'}"])
    )
    assert short["rounds_done"] < 5 and "test/recall@20" in short
    with pytest.raises(ValueError, match="checkpoint.every must be an int >= 1"):
        train_mod.train(compose([*base, "checkpoint.every=0", f"paths.output_dir={tmp_path / 'z'}"]))
