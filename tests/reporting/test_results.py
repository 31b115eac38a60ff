"""The results page: its numbers come from run folders; runs are subprocesses, reused, never deleted."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from fedshare import results as results_cli
from fedshare.data.sharing import GROUP_NAMES
from fedshare.reporting import results_page as results
from fedshare.tuning import campaign

# offset of each sharing group's Recall@20 from the run's overall Recall@20, so the column order shows
OFFSET = {g: 0.01 * i for i, g in enumerate(GROUP_NAMES)}


def _fake_run(
    root: Path,
    dataset: str,
    method: str,
    seed: int,
    recall: float,
    wall_s: float | None = None,
    best_round: int | None = None,
) -> None:
    folder = root / dataset / method / f"seed{seed}"
    folder.mkdir(parents=True)
    model = "popularity" if method == "popularity" else method.split("-")[0]
    (folder / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: {model}\nfed:\n  rounds: 100\n")
    metrics = {"test/recall@20": recall, "test/ndcg@20": recall / 2, "test/hr@20": 0.9}
    if best_round is not None:
        metrics["best_round"] = best_round
    metrics |= {f"test/recall@20/share={g}": recall + OFFSET[g] for g in GROUP_NAMES}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if wall_s is not None:  # the record the script leaves next to a run it made
        record = {"returncode": 0, "wall_s": wall_s, "machine": "2 CPUs, no GPU, torch 9.9"}
        folder.with_name(f"seed{seed}.run.json").write_text(json.dumps(record))


def _table(page: str, heading: str) -> dict[str, list[str]]:
    """Rows (first cell -> other cells) of the first table after the line ``heading``."""
    lines = page.splitlines()
    start = lines.index(heading)
    rows, seen_table = {}, False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if not cells[0].startswith("---"):
                rows[cells[0]] = cells[1:]
        elif seen_table:
            break
    return rows


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, r in enumerate([0.1, 0.2, 0.3]):  # seed 2 selected round 100, the cap
        _fake_run(root, "ml-100k", "fedmf", seed, r, wall_s=10.0 * (seed + 1), best_round=60 + 20 * seed)
    for seed, r in enumerate([0.25, 0.35]):  # seed 2 never finished
        _fake_run(root, "ml-100k", "fedshare", seed, r, best_round=50)
    _fake_run(root, "ml-100k", "popularity", 0, 0.05)
    (root / "ml-100k" / "popularity" / "seed1").mkdir()  # a killed run: no metrics.json
    for seed in range(3):  # on ml-1m FedShare does worse than FedMF
        _fake_run(root, "ml-1m", "fedmf", seed, 0.2)
        _fake_run(root, "ml-1m", "fedshare", seed, 0.15)
    return root


def test_page_from_finished_runs(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "RESULTS.md"
    args = [
        "--datasets",
        "ml-100k,ml-1m",
        "--runs-root",
        str(finished),
        "--out",
        str(out),
        "--collect-only",
        "--data-root",
        "/data/datasets",
    ]
    assert results_cli.main(args) == 0
    page = out.read_text()

    main = _table(page, "## ml-100k")
    assert list(main) == ["method", *(label for label, _ in results.METHODS)]
    assert main["FedMF"][:3] == ["0.2000 ± 0.1000", "0.1000 ± 0.0500", "n=3"]
    assert main["FedMF"][3:5] == ["60, 80, 100 (≤100), **1 at the cap**", "20.0 s (10.0 s to 30.0 s)"]
    assert main["FedShare"][:5] == ["0.3000 ± 0.0707", "0.1500 ± 0.0354", "n=2 of 3 (missing seed 2)", "50, 50 (≤100)", "n/a"]
    assert main["popularity"][:4] == ["0.0500 ±n/a", "0.0250 ±n/a", "n=1 of 3 (missing seeds 1, 2)", "—"]
    assert main["FedShare w/o graph"][:4] == ["—", "—", "n=0 of 3 (missing seeds 0, 1, 2)", "—"]
    assert main["FedMF"][5] == (
        "`python -m fedshare.train experiment=fedmf data=ml-100k data.root=/data/datasets seed={0,1,2}`"
    )
    assert main["FedShare w/o alignment"][5] == (
        "`python -m fedshare.train experiment=fedshare model.lambda_cl=0 data=ml-100k "
        "data.root=/data/datasets seed={0,1,2}`"
    )

    groups = _table(page, "### ml-100k: Recall@20 by sharing group")
    assert groups["method"] == [f"share={g}" for g in GROUP_NAMES]
    assert groups["FedMF"] == [f"{0.2 + OFFSET[g]:.4f} ± 0.1000" for g in GROUP_NAMES]
    assert groups["FedShare"] == [f"{0.3 + OFFSET[g]:.4f} ± 0.0707" for g in GROUP_NAMES]
    assert list(groups) == ["method", "FedMF", "FedShare"]

    assert "FedShare over FedMF: mean Recall@20 0.3000 vs 0.2000, relative gain **+50.00%**" in page
    assert "not the same seeds" in page  # FedShare has 2 seeds, FedMF 3
    assert "mean Recall@20 0.1500 vs 0.2000, relative gain **-25.00%**." in page  # ml-1m
    assert _table(page, "## ml-1m")["FedShare"][0] == "0.1500 ± 0.0000"

    assert "sample standard deviation (ddof=1)" in page
    assert "## gowalla" not in page  # not asked for
    overview = _table(page, "## Overview")
    assert overview["ml-100k"][:3] == ["0.2000 ± 0.1000", "0.3000 ± 0.0707", "+50.00%"]
    assert overview["ml-100k"][3].endswith("p = 0.000 (2 seeds): significant")  # +0.15 on both seeds
    assert overview["ml-1m"][2] == "-25.00%" and overview["ml-1m"][3].endswith("p = 0.000 (3 seeds): significant")
    assert (
        f"python -m fedshare.results --datasets ml-100k,ml-1m --seeds 0,1,2 --data-root /data/datasets "
        f"--runs-root {finished} --out {out}" in page
    )
    assert "- 2 CPUs, no GPU, torch 9.9 (3 runs)" in page and "- not recorded (9 runs)" in page

    data = json.loads(out.with_suffix(".json").read_text())  # the page's data, beside it
    fedmf = data["datasets"]["ml-100k"]["FedMF"]
    assert fedmf["summary"]["test/recall@20"] == pytest.approx({"n": 3, "mean": 0.2, "std": 0.1})
    assert data["datasets"]["ml-100k"]["popularity"]["summary"]["test/recall@20"]["std"] is None
    assert sorted(data["datasets"]["ml-100k"]["FedShare"]["runs"]) == ["0", "1"]
    # collect-only reads; it moves and runs nothing
    assert (finished / "ml-100k" / "popularity" / "seed1").is_dir()
    assert not list(finished.rglob("*incomplete*")) and not list(finished.rglob("*.log"))


def test_unknown_method_or_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert results_cli.main(["--methods", "FedMF,FedMFF", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'FedMFF'" in err and all(label in err for label, _ in results.METHODS)
    assert results_cli.main(["--datasets", "ml-10k", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'ml-10k'" in err and "ml-100k" in err and "synthetic" in err
    assert results_cli.main(["--seeds", "0,one"]) == 2


def test_a_config_error_stops_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    args = [
        "--datasets",
        "synthetic",
        "--methods",
        "popularity,FedMF",
        "--runs-root",
        str(root),
        "--out",
        str(out),
    ]
    assert results_cli.main([*args, "--", "model.dim=notanumber"]) == 2
    err = capsys.readouterr().err
    assert "model.dim" in err and "nothing was run" in err
    assert not root.exists() and not out.exists()


def test_a_finished_run_of_another_command_is_not_used(finished: Path, tmp_path: Path, capsys) -> None:
    record = {"overrides": ["experiment=fedmf", "data=ml-100k", "seed=0", "fed.rounds=2"], "returncode": 0}
    (finished / "ml-100k" / "fedmf" / "seed0.run.json").write_text(json.dumps(record))
    out = tmp_path / "RESULTS.md"
    args = ["--datasets", "ml-100k", "--runs-root", str(finished), "--out", str(out), "--collect-only"]
    assert results_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "ml-100k FedMF seed 0" in err and "fed.rounds=2" in err and "--runs-root" in err
    assert not out.exists()
    # where the data was read from and which device trained it decide no number: the same run
    record["overrides"] = ["experiment=fedmf", "data=ml-100k", "data.root=/elsewhere", "seed=0", "trainer.accelerator=gpu"]
    record["overrides"].append("fed.rounds=100")  # the cap its config.yaml holds
    (finished / "ml-100k" / "fedmf" / "seed0.run.json").write_text(json.dumps(record))
    assert results_cli.main([*args, "--", "fed.rounds=100"]) == 0, capsys.readouterr().err
    assert out.is_file()


def test_a_finished_run_of_another_config_is_not_used(tmp_path: Path) -> None:
    """The same command, but a ``config.yaml`` other than what its keys compose to now (a YAML
    default changed since, or a search wrote a new best.yaml): not reused. A key the run's config
    does not hold (added to the YAML since) is not compared; where files went is not either."""
    import yaml
    from omegaconf import OmegaConf

    from fedshare.config import compose
    from fedshare.reporting.results_page import Run, conflict

    run = Run("ml-100k", "FedMF", 0, ["experiment=fedmf", "data=ml-100k", "seed=0"], tmp_path / "fedmf" / "seed0")
    run.folder.mkdir(parents=True)
    run.record.write_text(json.dumps({"overrides": run.overrides, "returncode": 0}))
    cfg = OmegaConf.to_container(compose(run.args), resolve=True)
    del cfg["model"]["reg"]  # a key added to the YAML since the run
    cfg["paths"]["output_dir"] = "/elsewhere"
    (run.folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert conflict(run) is None
    cfg["fed"]["rounds"] = 7
    (run.folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "another config" in conflict(run) and "fed.rounds: 7 -> 500" in conflict(run)
    # a run whose search has not written its best.yaml yet is compared once it has
    run.overrides.append(f"overlay={tmp_path / 'best.yaml'}")
    run.record.write_text(json.dumps({"overrides": run.overrides, "returncode": 0}))
    assert conflict(run) is None
    (tmp_path / "best.yaml").write_text("fed:\n  rounds: 7\n")
    assert conflict(run) is None


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    methods = [("popularity", ["experiment=popularity"]), ("MF d=8", ["experiment=fedmf", "model.dim=8"])]
    args = ["--datasets", "synthetic", "--seeds", "3,4", "--methods", "MF d=8", "--runs-root", str(root)]
    assert results_cli.main([*args, "--out", str(out), "--dry-run", "--", "fed.rounds=7"], methods=methods) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1] == (
        f"[2/2] synthetic MF d=8 seed 4 would run: python -m fedshare.train experiment=fedmf model.dim=8 "
        f"data=synthetic seed=4 fed.rounds=7 paths.output_dir={root / 'synthetic' / 'mf-d-8' / 'seed4'} "
        "logger=none trainer.enable_progress_bar=false"
    )
    assert not root.exists() and not out.exists()


def test_a_failed_run_is_reported_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The campaign's bookkeeping, with the subprocess replaced (the real one is tested below)."""

    def execute(run: results.Run) -> results.Outcome:
        run.folder.parent.mkdir(parents=True, exist_ok=True)
        if run.label == "popularity":
            run.log.write_text("line 1\ndata error: no u.data\n")
            return results.Outcome(run, "failed", "exit 2 after 0.1 s")
        _fake_run(run.folder.parents[2], run.dataset, "fedmf", run.seed, 0.2, wall_s=1.0)
        return results.Outcome(run, "trained", "1.0 s")

    monkeypatch.setattr(results, "execute", execute)
    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    args = [
        "--datasets",
        "synthetic",
        "--seeds",
        "0",
        "--methods",
        "popularity,FedMF",
        "--runs-root",
        str(root),
    ]
    assert results_cli.main([*args, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "[1/2] synthetic popularity seed 0 ... FAILED (exit 2 after 0.1 s)" in captured.out
    assert "    data error: no u.data" in captured.out
    assert "[2/2] synthetic FedMF seed 0 ... 1.0 s" in captured.out
    assert "FAILED: 1 of 2 runs" in captured.err and "synthetic popularity seed 0: exit 2" in captured.err
    main = _table(out.read_text(), "## synthetic")
    assert main["popularity"][:3] == ["—", "—", "n=0 of 1 (missing seed 0)"]
    assert main["FedMF"][0] == "0.2000 ±n/a"


@pytest.mark.slow
def test_campaign_end_to_end_reuses_and_resumes(tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    args = [
        "--datasets",
        "synthetic",
        "--seeds",
        "0,1",
        "--methods",
        "popularity,FedMF",
        "--runs-root",
        str(root),
    ]
    args += ["--out", str(out), "--", *tiny, "fed.rounds=2"]
    assert results_cli.main(args) == 0
    first = capsys.readouterr().out
    assert "[4/4] synthetic FedMF seed 1 ... " in first

    page = out.read_text()
    main = _table(page, "## synthetic")
    for label, method in (("popularity", "popularity"), ("FedMF", "fedmf")):
        recalls = []
        for seed in (0, 1):
            folder = root / "synthetic" / method / f"seed{seed}"
            recalls.append(json.loads((folder / "metrics.json").read_text())["test/recall@20"])
            assert "Run folder:" in folder.with_name(f"seed{seed}.log").read_text()
            assert json.loads(folder.with_name(f"seed{seed}.run.json").read_text())["returncode"] == 0
        expected = f"{statistics.fmean(recalls):.4f} ± {statistics.stdev(recalls):.4f}"
        assert main[label][0] == expected and main[label][2] == "n=2"
        assert main[label][5].startswith(
            f"`python -m fedshare.train experiment={method} data=synthetic seed={{0,1}}"
        )
    # the seeds' selected rounds, read from the real runs, with the cap they trained under
    assert main["popularity"][3] == "—" and re.fullmatch(r"\d+, \d+ \(≤\d+\)(, \*\*\d at the cap\*\*)?", main["FedMF"][3])
    assert "FedMF" in _table(page, "### synthetic: Recall@20 by sharing group")

    # FedMF seed 1 was killed before its metrics were written; the rest is reused, not rerun
    killed = root / "synthetic" / "fedmf" / "seed1"
    (killed / "metrics.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".json", ".log")}
    assert results_cli.main(args) == 0
    second = capsys.readouterr().out
    assert second.count("... reused (") == 3 and "(1 trained, 3 reused)" in second
    assert (
        "[4/4] synthetic FedMF seed 1: moved an unfinished attempt aside: seed1 -> seed1-incomplete-"
        in second
    )
    after = {p: p.stat().st_mtime_ns for p in before if p.exists()}
    changed = {p.relative_to(root).as_posix() for p in before if after.get(p) != before[p]}
    assert changed == {"synthetic/fedmf/seed1.log", "synthetic/fedmf/seed1.run.json"}

    aside = sorted(p.name for p in killed.parent.glob("seed1-incomplete-*"))
    assert len(aside) == 3 and aside[1].endswith(".log") and aside[2].endswith(".run.json")
    assert (killed.parent / aside[0] / "config.yaml").is_file()  # the killed run, kept
    assert (killed / "metrics.json").is_file()  # and the run made again
    assert _table(out.read_text(), "## synthetic")["FedMF"][2] == "n=2"


@pytest.mark.slow
def test_a_real_failed_run_shows_its_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "datasets"
    empty.mkdir()
    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    args = ["--datasets", "ml-100k", "--seeds", "0", "--methods", "popularity", "--data-root", str(empty)]
    args += ["--runs-root", str(root), "--out", str(out), "--", "data.download.url=null"]
    assert results_cli.main(args) == 1
    captured = capsys.readouterr()
    assert "[1/1] ml-100k popularity seed 0 ... FAILED (exit 2 after" in captured.out
    assert "data error" in captured.out and "u.data" in captured.out  # the tail of the run's log
    assert "FAILED: 1 of 1 runs" in captured.err
    page = out.read_text()
    assert "**Not run yet**: no run of its 1 rows has finished" in page
    assert "- popularity: `python -m fedshare.train experiment=popularity data=ml-100k" in page


def test_tuned_campaign_searches_each_method_with_the_same_budget(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--tune-trials N: each method's config is chosen among N trials, then its runs take its
    search's best keys; the ablation runs at FedShare's and keeps its own switch. FedShare's search
    is staged: it trains at the best of FedMF's first N/2 trials and searches only its own knobs
    with the other N/2."""
    from omegaconf import OmegaConf

    from fedshare.tuning.search import best_of_first

    root, out = tmp_path / "runs", tmp_path / "RESULTS.md"
    args = ["--datasets", "synthetic", "--seeds", "0", "--methods", "FedMF,FedShare w/o alignment"]
    args += ["--runs-root", str(root), "--out", str(out), "--tune-trials", "4"]
    args += ["--", *tiny, "fed.rounds=2", "eval.every=1"]
    assert results_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "[search 1/2] synthetic search fedmf (4 trials)" in printed
    assert "[search 2/2] synthetic search fedshare (2 trials, at the best of fedmf's first 2)" in printed
    fedmf, fedshare = root / "tune" / "synthetic-fedmf", root / "tune" / "synthetic-fedshare"
    mf, share = (json.loads((s / "report.json").read_text()) for s in (fedmf, fedshare))
    assert mf["trials"]["complete"] + mf["trials"]["pruned"] == 4
    assert share["trials"]["complete"] + share["trials"]["pruned"] == 2
    # FedShare searched none of FedMF's knobs; every trial trained at the best of FedMF's first 2,
    # and that trial is one of its candidates too (FedShare with no alignment and no fusion)
    base, number, value = best_of_first(fedmf, 2)
    assert share["base"]["trial"] == number and share["base"]["value"] == value
    if share["base"]["chosen"]:
        assert share["best_params"]["model.lambda_cl"] == 0 and share["best_params"]["model.beta"] == 0
    assert set(share["best_params"]) == {"model.lambda_cl", "model.q_align_lr", "model.beta", "model.server_graph_lr"}
    assert share["fixed_params"] == base and set(base) == set(mf["best_params"])
    for trial in (fedshare / "trials").iterdir():
        cfg = OmegaConf.load(trial / "config.yaml")
        assert all(OmegaConf.select(cfg, k) == v for k, v in base.items()), trial
    # each row runs its search's best.yaml, which alone holds every key of the best trial
    for search, method in ((fedmf, "fedmf"), (fedshare, "fedshare-wo-alignment")):
        report = json.loads((search / "report.json").read_text())
        cfg = OmegaConf.load(root / "synthetic" / method / "seed0" / "config.yaml")
        for key, value in {**report["fixed_params"], **report["best_params"]}.items():
            if key != "model.lambda_cl":
                assert OmegaConf.select(cfg, key) == value, key
        record = json.loads((root / "synthetic" / method / "seed0.run.json").read_text())
        assert f"overlay={search / 'best.yaml'}" in record["overrides"]
    assert OmegaConf.load(root / "synthetic" / "fedshare-wo-alignment" / "seed0" / "config.yaml").model.lambda_cl == 0
    page = out.read_text()
    tuning = _table(page, "### synthetic: tuning (the same budget for every searched method)")
    assert tuning["`fedmf`"][0] == "4" and tuning["`fedshare`"][0] == "2 of `fedmf` + 2"
    assert "; from `fedmf`: `model.local_epochs=" in tuning["`fedshare`"][3]
    assert "`fedshare`'s search is staged" in page and "--tune-trials 4" in page
    # again: the searches and runs are reused; a base that changed under a staged search is refused
    assert results_cli.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("... reused (") == 4
    (fedshare / "report.json").unlink()  # the search is unfinished: it would resume...
    text = (fedshare / "base.yaml").read_text()
    (fedshare / "base.yaml").write_text(text.replace("model:", "model:\n  dim: 3", 1))  # ...from other keys
    assert results_cli.main(args) == 2  # refused before anything runs: its trials trained at other keys
    err = capsys.readouterr().err
    assert "trained with another config" in err and "model.dim: 64 -> 3" in err and "nothing was run" in err
    spec = (fedshare / "search.yaml").read_text()  # a search.yaml from before it recorded its config:
    (fedshare / "search.yaml").write_text(spec[: spec.index("config:")])  # base.yaml itself is checked
    assert results_cli.main(args) == 1
    assert "holds other keys than the best of the first 2 trials" in capsys.readouterr().out


def test_a_dataset_may_have_its_own_budget_the_same_for_every_method() -> None:
    datasets = ["synthetic", "ml-1m", "gowalla"]
    assert campaign.parse_budget("20", datasets) == {"synthetic": 20, "ml-1m": 20, "gowalla": 20}
    assert campaign.parse_budget("20,gowalla=6", datasets) == {"synthetic": 20, "ml-1m": 20, "gowalla": 6}
    assert campaign.parse_budget("gowalla=6", datasets) == {"synthetic": 0, "ml-1m": 0, "gowalla": 6}
    for bad in ("x", "-1", "20,30", "20,lastfm=4", "20,gowalla=-2", "20,gowalla=six"):
        with pytest.raises(ValueError, match="--tune-trials takes N"):
            campaign.parse_budget(bad, datasets)
    searches = campaign.plan_searches(
        datasets, results.searched(results.METHODS), {"synthetic": 20, "ml-1m": 0, "gowalla": 6}, None, Path("r"), [], 0.1
    )
    by = {(s.dataset, s.experiment): (s.trials, s.budget) for s in searches}
    assert by == {
        (d, e): (n // 2 if e == "fedshare" else n, n)
        for d, n in (("synthetic", 20), ("gowalla", 6))
        for e in ("fedmf", "fedshare", "lightgcn_central")
    }
    staged = [s for s in searches if s.experiment == "fedshare"]
    assert all(s.base.experiment == "fedmf" and s.base.dataset == s.dataset for s in staged)
    assert staged[0].base_knobs == ["model.lr", "model.reg", "model.local_epochs", "model.server_lr"]
    assert "space.model.lr=null" in staged[0].args and f"overlay={staged[0].base_overlay}" in staged[0].args
    # FedShare alone still gets its base searched first
    alone = campaign.plan_searches(["synthetic"], ["fedshare"], {"synthetic": 4}, None, Path("r"), [], 0.1)
    assert [(s.experiment, s.trials) for s in alone] == [("fedmf", 4), ("fedshare", 2)]


def test_a_bad_budget_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "runs"
    args = ["--datasets", "synthetic", "--runs-root", str(root), "--tune-trials", "20,ml-1m=5"]
    assert results_cli.main(args) == 2
    assert "--tune-trials takes N" in capsys.readouterr().err and not root.exists()
    assert results_cli.main(["--datasets", "synthetic", "--valid-ratio", "1.5", "--runs-root", str(root)]) == 2
    assert "--valid-ratio" in capsys.readouterr().err and not root.exists()


def test_datasets_without_a_validation_file_get_one_carved_from_train() -> None:
    """Every protocol run selects on validation: given train/test files and no validation file
    (Gowalla), the runs and searches carve one; others keep their own split (Last.fm's config
    carves its own)."""
    assert campaign.data_args("gowalla", "/d", 0.1) == ["data=gowalla", "data.root=/d", "data.split.valid_ratio=0.1"]
    assert campaign.data_args("gowalla", None, 0.0) == ["data=gowalla"]
    assert campaign.data_args("lastfm", "/d", 0.1) == ["data=lastfm", "data.root=/d"]
    assert campaign.data_args("ml-1m", "/d", 0.1) == ["data=ml-1m", "data.root=/d"]
    assert campaign.data_args("synthetic", "/d", 0.1) == ["data=synthetic"]
    runs = results.plan(["gowalla"], [0], results.METHODS[:2], "/d", Path("r"), [])
    assert all("data.split.valid_ratio=0.1" in r.overrides for r in runs)


def test_the_gain_carries_a_paired_t_test_over_seeds() -> None:
    from scipy.stats import ttest_rel

    def entry(values: dict[int, float]) -> dict:
        return {"runs": {str(s): {"metrics": {"test/recall@20": v}} for s, v in values.items()}}

    new, old = entry({0: 0.36, 1: 0.35, 2: 0.33, 3: 0.5}), entry({0: 0.35, 1: 0.36, 2: 0.33})
    test = results.paired_t(new, old, "test/recall@20")
    ref = ttest_rel([0.36, 0.35, 0.33], [0.35, 0.36, 0.33])
    assert test["seeds"] == ["0", "1", "2"] and test["df"] == 2  # seed 3 has no pair
    assert test["t"] == pytest.approx(ref.statistic) and test["p"] == pytest.approx(ref.pvalue)
    assert results.paired_t(entry({0: 0.3}), old, "test/recall@20") is None

    rows = {
        "FedShare": {**entry({0: 0.30, 1: 0.32, 2: 0.31}), "summary": {}},
        "FedMF": {**entry({0: 0.20, 1: 0.21, 2: 0.205}), "summary": {}},
    }
    for label in rows:
        values = [r["metrics"]["test/recall@20"] for r in rows[label]["runs"].values()]
        rows[label]["summary"]["test/recall@20"] = results.summarize(values)
    line = results.gain_line(rows)
    assert "Paired over seeds 0, 1, 2" in line and "**significant** (p < 0.05)" in line
    rows["FedShare"] = {**entry({0: 0.21, 1: 0.20, 2: 0.206}), "summary": {}}
    rows["FedShare"]["summary"]["test/recall@20"] = results.summarize([0.21, 0.20, 0.206])
    assert "**within noise**" in results.gain_line(rows)


def test_a_dataset_with_no_finished_run_says_so_without_empty_tables(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    args = ["--datasets", "ml-100k,gowalla", "--runs-root", str(finished), "--out", str(out), "--collect-only"]
    assert results_cli.main([*args, "--tune-trials", "20,gowalla=6"]) == 0
    page = out.read_text()
    section = page[page.index("## gowalla") :]
    assert "**Not run yet**" in section and "6 trials for every searched method" in section
    assert "|" not in section  # no table of dashes
    assert "- FedMF: `python -m fedshare.train experiment=fedmf data=gowalla data.split.valid_ratio=0.1" in section
    assert "overlay=<best.yaml of search gowalla-fedmf>`" in section  # no link to a file not there yet
    assert _table(page, "## Overview")["gowalla"][0] == "not run yet"
    assert "## ml-100k" in page and "### ml-100k: Recall@20 by sharing group" in page


def test_a_search_note_is_shown_under_its_tuning_table(tmp_path: Path) -> None:
    """A search's own NOTE.md (what its records cannot say, e.g. code that changed since it ran)
    reaches the page, under its dataset's tuning table; a search without one shows none."""
    from fedshare.reporting.results_page import tuning_lines
    from fedshare.tuning.campaign import NOTE, Search, search_rows

    noted, plain = tmp_path / "tune" / "x-fedshare", tmp_path / "tune" / "x-fedmf"
    noted.mkdir(parents=True)
    plain.mkdir(parents=True)
    (noted / NOTE).write_text("Ran with the old\nnegatives.\n")
    searches = [Search("x", "fedmf", [], 2, plain), Search("x", "fedshare", [], 2, noted)]
    rows = search_rows(searches)["x"]
    lines = tuning_lines("x", rows)
    assert lines[-1] == f"Note on the `fedshare` search (`{noted}/{NOTE}`): Ran with the old negatives."
    assert sum("Note on the" in line for line in lines) == 1
    # a staged search that has not started names no base.yaml (the file is not there); once written, it does
    staged = Search("x", "fedshare", [], 1, noted, base=searches[0], base_trials=1)
    assert not any(f"{noted}/base.yaml" in line for line in tuning_lines("x", search_rows([staged])["x"]))
    (noted / "base.yaml").write_text("model: {}\n")
    assert any(f"`{noted}/base.yaml`" in line for line in tuning_lines("x", search_rows([staged])["x"]))
    # the page says whether the staged search's base trial was among its candidates, and if it won
    assert any("ran before its base trial" in line for line in tuning_lines("x", search_rows([staged])["x"]))
    report = {"monitor": "val/recall@20", "best_value": 0.3, "trials": {"complete": 1}}
    for chosen, needle in ((True, "No trial of `fedshare`'s own beat its base"), (False, None)):
        base = {"search": str(plain), "trial": 0, "value": 0.3, "chosen": chosen}
        (noted / "report.json").write_text(json.dumps({**report, "base": base}))
        text = "\n".join(tuning_lines("x", search_rows([staged])["x"]))
        assert "ran before its base trial" not in text and "one of its candidates" in text
        assert (needle in text) if needle else "beat its base" not in text


def test_a_row_whose_search_has_not_ended_names_its_overlay_instead_of_linking_it(tmp_path: Path) -> None:
    done = tmp_path / "tune" / "x-fedmf" / "best.yaml"
    done.parent.mkdir(parents=True)
    done.write_text("model: {lr: 1.0}\n")
    later = tmp_path / "tune" / "x-lightgcn_central" / "best.yaml"
    command = f"python -m fedshare.train experiment=fedmf overlay={done} && x overlay={later} seed=0"
    assert results.unrun_overlays(command) == (
        f"python -m fedshare.train experiment=fedmf overlay={done} && x "
        "overlay=<best.yaml of search x-lightgcn_central> seed=0"
    )


def test_a_search_folder_of_another_protocol_is_refused_not_reused(tmp_path: Path, capsys) -> None:
    """A finished search at a planned path counts only if it is that search: the same run keys
    (a staged one: at its base.yaml) and, staged, none of its base's knobs searched again. A joint
    search left at the staged search's path stops the campaign before anything runs."""
    import yaml

    root = tmp_path / "runs"
    mf, share = campaign.plan_searches(["synthetic"], ["fedmf", "fedshare"], {"synthetic": 4}, None, root, [], 0.1)

    def finish(search: campaign.Search, run_overrides: list[str], space: dict) -> None:
        search.folder.mkdir(parents=True, exist_ok=True)
        (search.folder / "search.yaml").write_text(yaml.safe_dump({"run_overrides": run_overrides, "space": space}))
        report = {"trials": {"complete": search.trials}}
        if search.base is not None:  # a staged search reports its base trial, one of its candidates
            report["base"] = {"search": str(search.base.folder), "trial": 0, "value": 0.1, "chosen": False}
        (search.folder / "report.json").write_text(json.dumps(report))
        (search.folder / "best.yaml").write_text("model:\n  lr: 0.1\n")

    finish(mf, mf.run_overrides, mf.space)
    staged_space = share.space  # configs/tune/fedshare.yaml's, less FedMF's knobs
    assert staged_space["model"]["lr"] is None and staged_space["model"]["beta"] is not None
    finish(share, share.run_overrides, staged_space)
    (share.folder / "base.yaml").write_text("model:\n  lr: 0.1\n")
    assert mf.done() and share.done()
    # a staged search from before its base trial was a candidate is not done: it resumes to add it
    report = json.loads((share.folder / "report.json").read_text())
    (share.folder / "report.json").write_text(json.dumps({**report, "base": None}))
    assert not share.done()
    finish(share, share.run_overrides, staged_space)
    # a search.yaml that records its config (every new one does) must match what its keys compose now
    from omegaconf import OmegaConf

    from fedshare.config import compose

    spec = yaml.safe_load((mf.folder / "search.yaml").read_text())
    spec["config"] = OmegaConf.to_container(compose(mf.run_overrides), resolve=True)
    spec["config"]["paths"]["runs_root"] = "elsewhere"  # where files go decides nothing
    (mf.folder / "search.yaml").write_text(yaml.safe_dump(spec))
    assert mf.done()
    spec["config"]["model"]["lr"] = 123.0  # a searched knob's default reaches no trial: still the same search
    (mf.folder / "search.yaml").write_text(yaml.safe_dump(spec))
    assert mf.done()
    spec["config"]["fed"]["rounds"] = 100  # the trials trained under another YAML default
    (mf.folder / "search.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(campaign.ConfigError, match=r"another config .*fed\.rounds: 100 -> 500"):
        mf.done()
    # the same folder spelled another way is the same search
    respelled = [a.replace(str(root), str(tmp_path / "." / "runs")) for a in share.run_overrides]
    finish(share, respelled, staged_space)
    assert share.done()
    # a staged search whose folder searched FedMF's knobs again (the joint protocol) is refused
    finish(share, share.run_overrides, {"model": {"lr": {"low": 0.01, "high": 1.0}}})
    with pytest.raises(campaign.ConfigError, match="it searches model.lr again"):
        share.done()
    # ... and one without its base overlay among the run keys, before anything runs
    joint = [a for a in share.run_overrides if not a.startswith("overlay=")]
    finish(share, joint, staged_space)
    with pytest.raises(campaign.ConfigError, match="holds another search"):
        share.done()
    args = ["--datasets", "synthetic", "--seeds", "0", "--methods", "FedShare"]
    args += ["--runs-root", str(root), "--out", str(tmp_path / "R.md"), "--tune-trials", "4", "--collect-only"]
    assert results_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "synthetic search fedshare" in err and "holds another search" in err and "nothing was run" in err
    assert not (tmp_path / "R.md").exists()
    # a folder that searched another space than configs/tune/ gives now (a range changed) is refused
    moved = {"model": {**staged_space["model"], "beta": {"low": 0.0, "high": 0.5}}}
    finish(share, share.run_overrides, moved)
    with pytest.raises(campaign.ConfigError, match=r"another space .*model\.beta: .*high.*0\.5"):
        share.done()
    # a staged folder that lost its base.yaml is refused too
    finish(share, share.run_overrides, staged_space)
    (share.folder / "base.yaml").unlink()
    with pytest.raises(campaign.ConfigError, match="base.yaml is missing"):
        share.done()
