"""data=csv: a user's own CSV file through the whole job, with `data.path` and `data.columns`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedshare import train as train_mod
from fedshare.config import ConfigError, compose
from fedshare.data.datasets import load_dataset

N_USERS, N_ITEMS, PER_USER = 30, 40, 10
QUICK = ["fed.rounds=2", "logger=none", "eval.batch_users=25", "trainer.enable_progress_bar=false"]
LEARN_ONLY = ["unlearn.methods=[]"]


def write_csv(path: Path, header: str, row) -> Path:
    """``PER_USER`` distinct items for each of ``N_USERS`` users, one ``row(u, i, k)`` line each."""
    rng = np.random.default_rng(0)
    lines = [header]
    for u in range(N_USERS):
        for k, i in enumerate(rng.choice(N_ITEMS, size=PER_USER, replace=False)):
            lines.append(row(u, int(i), k))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_item_csv_needs_only_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv(tmp_path / "mine.csv", "user,item", lambda u, i, k: f"{u},{i}")
    monkeypatch.chdir(tmp_path)  # a relative data.path is read from the working folder
    run = tmp_path / "run"
    metrics, objects = train_mod.train(
        compose(["data=csv", "data.path=mine.csv", *QUICK, *LEARN_ONLY, f"paths.output_dir={run}"])
    )
    dm = objects["datamodule"]
    assert dm.n_users == N_USERS and dm.n_items <= N_ITEMS
    assert 0.0 <= metrics["test/recall@20"] <= 1.0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["choices"]["data"] == "csv" and saved["data"]["path"] == "mine.csv"

    # the split is random per user (80/10/10), seeded by the run seed
    cfg = compose(["data=csv", f"data.path={tmp_path / 'mine.csv'}"]).data
    a, b, c = load_dataset(cfg, seed=0), load_dataset(cfg, seed=0), load_dataset(cfg, seed=1)
    assert (len(a.train), len(a.valid), len(a.test)) == (240, 30, 30)
    assert np.array_equal(a.test.items, b.test.items) and np.array_equal(a.test.users, b.test.users)
    assert not np.array_equal(a.test.items, c.test.items)


def test_other_column_names_with_rating_and_time(tmp_path: Path) -> None:
    # text ids, extra columns the config does not name, a rating and a time column
    csv = write_csv(
        tmp_path / "log.csv",
        "uid,country,iid,stars,ts",
        lambda u, i, k: f"u{u},xx,i{i},{1 + k % 5},{1_600_000_000 + 60 * k}",
    )
    run = tmp_path / "run"
    overrides = [
        "data=csv",
        f"data.path={csv}",
        "data.columns.user=uid",
        "data.columns.item=iid",
        "data.columns.rating=stars",
        "data.columns.time=ts",
        "data.implicit_threshold=2",
        "sharing.selection=recent",
    ]
    metrics, objects = train_mod.train(compose([*overrides, *QUICK, *LEARN_ONLY, f"paths.output_dir={run}"]))
    assert "test/ndcg@20" in metrics
    data = load_dataset(compose(overrides).data, seed=0)
    assert data.n_users == N_USERS and all(str(u).startswith("u") for u in data.user_ids)
    # stars 1..5 cycle over each user's 10 rows: threshold 2 keeps 8 of them
    assert len(data.train) + len(data.valid) + len(data.test) == N_USERS * 8
    assert data.train.times is not None and data.train.times.min() >= 1_600_000_000


def test_a_missing_column_or_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = write_csv(tmp_path / "mine.csv", "user,item", lambda u, i, k: f"{u},{i}")
    run = tmp_path / "run"
    common = ["data=csv", *QUICK, f"paths.output_dir={run}"]

    assert train_mod.main([*common, f"data.path={csv}", "data.columns.user=uid"]) == 2
    err = capsys.readouterr().err
    assert str(csv) in err and "'uid'" in err and "data.columns.user" in err
    assert "['user', 'item']" in err  # what the file offers
    assert not run.exists()

    missing = tmp_path / "nope.csv"
    assert train_mod.main([*common, f"data.path={missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "header row" in err
    assert not run.exists()

    assert train_mod.main(common) == 2  # data=csv alone: which key to set
    assert "data.path" in capsys.readouterr().err

    with pytest.raises(ConfigError, match="data.split.mode must be ratio"):  # refused before any work
        compose(["data=csv", f"data.path={csv}", "data.split.mode=given"])
