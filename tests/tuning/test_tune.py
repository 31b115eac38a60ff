"""`python -m fedshare.tune`: Optuna on validation, its folder, its overlay, resume after a kill,
and proof that a search never reads the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedshare import tune as tune_mod
from fedshare.config import compose

REPO = Path(__file__).resolve().parents[2]
FAST = ["experiment=fedmf", "fed.rounds=3", "eval.every=1", "logger=none"]
SEARCH = ["startup_trials=2", "pruner.startup_trials=2", "pruner.warmup=1"]


def _search(tiny, out: Path, *more: str) -> int:
    return tune_mod.main([*tiny, *FAST, *SEARCH, f"out={out}", *more])


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="fedshare", storage=f"sqlite:///{out / 'study.db'}").get_trials()


def test_a_search_writes_its_folder_and_an_overlay_train_accepts(tiny, tmp_path: Path, capsys) -> None:
    out = tmp_path / "search"
    assert _search(tiny, out, "trials=3") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the last line: JSON
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 3
    for name in ("study.db", "search.yaml", "best.yaml", "report.md", "report.json", "commands.txt"):
        assert (out / name).is_file(), name
    trials = _trials(out)
    best = max((t for t in trials if t.value is not None and t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["best_value"] == best.value
    # every trial is a normal run folder; the value is its selected round's validation
    folder = out / "trials" / f"trial-{best.number:04d}"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["val/recall@20"] == best.value
    # the overlay sets the best trial's knobs, and train (or results) takes it as overlay=FILE
    cfg = compose([*tiny, *FAST, f"overlay={out / 'best.yaml'}"])
    for key, value in best.params.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert sorted(best.params) == ["model.local_epochs", "model.lr", "model.reg", "model.server_lr"]
    # the same folder again is refused; resume=true with another space too
    assert _search(tiny, out, "trials=3") == 2
    assert "resume=true" in capsys.readouterr().err
    assert _search(tiny, out, "trials=3", "resume=true", "space.model.lr.high=2") == 2
    assert "another search" in capsys.readouterr().err
    # resume=true on a finished search adds nothing and reports again
    assert _search(tiny, out, "trials=3", "resume=true") == 0
    assert len(_trials(out)) == 3
    # search.yaml keeps the config the keys composed to: had a YAML default changed since (here
    # the record says the trials trained 5 rounds, the same keys now give 3), resume is refused
    capsys.readouterr()
    spec = yaml.safe_load((out / "search.yaml").read_text())
    assert spec["config"]["fed"]["rounds"] == 3 and spec["config"]["model"]["name"] == "fedmf"
    spec["config"]["fed"]["rounds"] = 5
    (out / "search.yaml").write_text(yaml.safe_dump(spec))
    assert _search(tiny, out, "trials=3", "resume=true") == 2
    assert "fed.rounds: 5 -> 3" in capsys.readouterr().err
    # a search.yaml from before it recorded the config is compared on its keys only
    del spec["config"]
    (out / "search.yaml").write_text(yaml.safe_dump(spec))
    assert _search(tiny, out, "trials=3", "resume=true") == 0


def test_a_killed_search_resumes_without_losing_finished_trials(tiny, tmp_path: Path) -> None:
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "fedshare.tune", *tiny, *FAST, *SEARCH, f"out={out}", "trials=4"]
    env = {**os.environ, "FEDSHARE_FAULT_KILL_AT_TRIAL": "2"}  # SIGKILL in round 2 of trial 2
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = {t.number: (t.state.name, t.value, t.params) for t in _trials(out)}
    assert [before[n][0] for n in sorted(before)][:2] in (["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"])
    assert before[2][0] == "RUNNING"
    assert tune_mod.main([*tiny, *FAST, *SEARCH, f"out={out}", "trials=4", "resume=true"]) == 0
    after = {t.number: (t.state.name, t.value, t.params) for t in _trials(out)}
    assert after[0] == before[0] and after[1] == before[1]  # finished trials are kept as they were
    assert after[2][0] == "FAIL" and (out / "trials" / "trial-0002-incomplete").is_dir()
    assert sum(state in ("COMPLETE", "PRUNED") for state, _, _ in after.values()) == 4


def test_a_search_never_reads_the_test_split(tiny, tmp_path: Path, monkeypatch) -> None:
    """The same search with the test split poisoned (every test item moved) proposes the same
    trials and gets the same values: nothing chosen looked at test. The test metrics differ."""
    assert _search(tiny, tmp_path / "clean", "trials=3") == 0
    setup = FederatedDataModule.setup

    def poisoned(self, stage=None):
        setup(self, stage)
        test = self.test
        items = (test.items + 7) % test.n_items
        for u in range(test.n_users):  # rows stay sorted, as a UserCSR's must
            lo, hi = test.indptr[u], test.indptr[u + 1]
            items[lo:hi] = np.sort(items[lo:hi])
        object.__setattr__(test, "items", items)

    monkeypatch.setattr(FederatedDataModule, "setup", poisoned)
    assert _search(tiny, tmp_path / "poisoned", "trials=3") == 0
    clean, dirty = _trials(tmp_path / "clean"), _trials(tmp_path / "poisoned")
    assert [(t.params, t.value, t.state) for t in clean] == [(t.params, t.value, t.state) for t in dirty]
    report = lambda p: json.loads((p / "report.json").read_text())  # noqa: E731
    assert report(tmp_path / "clean")["best_params"] == report(tmp_path / "poisoned")["best_params"]
    best = report(tmp_path / "clean")["best_trial"]
    test_of = lambda p: json.loads((p / "trials" / f"trial-{best:04d}" / "metrics.json").read_text())["test/recall@20"]  # noqa: E731
    assert test_of(tmp_path / "clean") != test_of(tmp_path / "poisoned")  # the poison reached the test


def test_trials_log_to_one_wandb_group(tiny, tmp_path: Path) -> None:
    out = tmp_path / "search"
    args = [*tiny, *[a for a in FAST if a != "logger=none"], "logger.mode=offline", *SEARCH, f"out={out}", "trials=1"]
    assert tune_mod.main(args) == 0
    groups = {
        OmegaConf.load(p / "config.yaml").logger.group for p in (out / "trials").iterdir() if p.is_dir()
    }
    assert groups == {"tune-search"}
    assert all(any((p / "wandb").glob("offline-run-*")) for p in (out / "trials").iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trialz=3"], "trialz"),
        (["space.model.nope={low: 1, high: 2}"], "model.nope"),
        (["space.model.lr={low: 2, high: 1}"], "low < high"),
        (["experiment=popularity"], "no search space for model 'popularity'"),
        (["eval.monitor=null"], "eval.monitor"),
    ],
)
def test_bad_search_input_names_what_is_wrong(tiny, tmp_path: Path, capsys, args, needle) -> None:
    assert tune_mod.main([*tiny, *FAST, f"out={tmp_path / 's'}", *args]) == 2
    assert needle in capsys.readouterr().err


def test_a_null_knob_is_not_searched_and_an_overlay_reaches_best_yaml(tiny, tmp_path: Path) -> None:
    """``space.KEY=null`` leaves a knob out; the run's overlay=FILE keys train every trial and are
    written into best.yaml beside the searched ones, so best.yaml alone reproduces the best trial."""
    from fedshare.tuning.search import knobs

    assert list(knobs({"model": {"lr": None, "reg": {"low": 0.1, "high": 1.0}}})) == ["model.reg"]
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("model:\n  lr: 0.123\n  server_lr: 2.5\n")
    out = tmp_path / "search"
    drop = ["space.model.lr=null", "space.model.server_lr=null"]
    assert _search(tiny, out, "trials=2", f"overlay={fixed}", *drop) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["best_params"]) == ["model.local_epochs", "model.reg"]
    assert report["fixed_params"] == {"model.lr": 0.123, "model.server_lr": 2.5}
    for trial in (out / "trials").iterdir():
        assert OmegaConf.load(trial / "config.yaml").model.lr == 0.123
    best = OmegaConf.load(out / "best.yaml")
    assert best.model.lr == 0.123 and best.model.server_lr == 2.5 and "reg" in best.model


def test_a_staged_search_has_its_base_trial_among_its_candidates(tiny, tmp_path: Path, capsys) -> None:
    """``base=FOLDER base_trials=N``: the best of the base search's first N trials (the keys every
    trial trains at) enters the study once, at the ``as_base`` values (FedShare with no alignment and
    no fusion), with the base trial's value; it is not one of the search's own trials. FedShare
    there is that FedMF trial's model to the digit, so the value is its own."""
    from fedshare.train import train
    from fedshare.tuning.search import best_of_first, overlay

    mf = tmp_path / "mf"
    assert _search(tiny, mf, "trials=2") == 0
    keys, number, value = best_of_first(mf, 2)
    base_yaml = tmp_path / "base.yaml"
    base_yaml.write_text(yaml.safe_dump(overlay(keys)))
    share = tmp_path / "share"
    run = [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=1", "logger=none", *SEARCH]
    mine = [f"space.model.{k}=null" for k in ("lr", "reg", "local_epochs", "server_lr")]
    staged = [f"overlay={base_yaml}", *mine, f"base={mf}", "base_trials=2", f"out={share}", "trials=2"]
    capsys.readouterr()
    assert tune_mod.main([*run, *staged]) == 0
    report = json.loads((share / "report.json").read_text())
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 2  # its own; the base's is its base's
    trials = _trials(share)
    assert len(trials) == 3
    (based,) = [t for t in trials if "base_search" in t.user_attrs]
    assert based.value == value and based.user_attrs["base_trial"] == number
    assert based.params["model.lambda_cl"] == 0 and based.params["model.beta"] == 0
    assert report["base"]["trial"] == number and report["base"]["value"] == value
    assert report["base"]["chosen"] == (report["best_trial"] == based.number)
    assert "| base |" in (share / "report.md").read_text()
    # FedShare at the base's keys with its knobs off is the base trial's model: the same validation
    check = [*tiny, "experiment=fedshare", "fed.rounds=3", "eval.every=1", "logger=none", f"overlay={base_yaml}"]
    metrics, _ = train(compose([*check, "model.lambda_cl=0", "model.beta=0", f"paths.output_dir={tmp_path / 'c'}"]))
    assert metrics["val/recall@20"] == value
    # resumed, the base trial is not added again
    assert tune_mod.main([*run, *staged, "resume=true"]) == 0
    assert len(_trials(share)) == 3
    # the run's overlay must be the base's best keys, and the as_base values inside the space
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  lr: 0.123\n")
    capsys.readouterr()
    bad = [f"overlay={wrong}", *mine, f"base={mf}", "base_trials=2", f"out={tmp_path / 's2'}", "trials=1"]
    assert tune_mod.main([*run, *bad]) == 2
    assert "not the best of the first 2 trials" in capsys.readouterr().err
    outside = [*staged[:-2], f"out={tmp_path / 's3'}", "trials=1", "space.model.beta={low: 0.5, high: 1.0}"]
    assert tune_mod.main([*run, *outside]) == 2
    assert "outside this search's space: model.beta=0.0" in capsys.readouterr().err
