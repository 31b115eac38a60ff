"""The unlearning report: before/after table, figures, W&B logging, its notebook and the results
page (``python -m fedshare.report``), on fake runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fedshare import atomic
from fedshare import report as report_cli
from fedshare.reporting import unlearning_page as report

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "unlearning_report.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LEARN = {
    "learn/test/recall@20": 0.25,
    "learn/test/ndcg@20": 0.2,
    "learn/revoking/recall@20": 0.3,
    "learn/revoking/ndcg@20": 0.22,
    "learn/forget/hit@20": 0.6,
    "learn/mia/auc": 0.8,
}
# method -> (test recall, test ndcg, revoking recall, forget hit, mia auc, time_s, storage_bytes)
AFTER = {
    "retrain": (0.24, 0.19, 0.21, 0.05, 0.5, 120.0, 0),
    "fru": (0.23, 0.18, 0.2, 0.1, 0.55, 3.456, 50 * 1024**2),
    "delete_only": (0.25, 0.2, 0.29, 0.55, 0.78, 0.01, 0),
    "contrastive": (0.245, 0.195, 0.22, 0.07, 0.52, 12.345, 1.5 * 1024**2),
}


def unlearn_metrics(methods: dict[str, tuple] = AFTER, k: int = 20) -> dict[str, float]:
    metrics = {key.replace("@20", f"@{k}"): value for key, value in LEARN.items()}
    for m, (recall, ndcg, rev, hit, auc, time_s, storage) in methods.items():
        p = f"unlearn/{m}/"
        metrics |= {
            f"{p}test/recall@{k}": recall,
            f"{p}test/ndcg@{k}": ndcg,
            f"{p}revoking/recall@{k}": rev,
            f"{p}revoking/ndcg@{k}": ndcg - 0.01,
            f"{p}forget/hit@{k}": hit,
            f"{p}mia/auc": auc,
            f"{p}time_s": time_s,
            f"{p}storage_bytes": storage,
        }
    return metrics


def make_run(folder: Path, metrics: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\nchoices: {experiment: fedshare_unlearn}\n")
    (folder / "metrics.json").write_text(json.dumps(unlearn_metrics() if metrics is None else metrics))
    return folder


def test_methods_in_canonical_order_then_unknown_ones() -> None:
    metrics = unlearn_metrics() | {
        "unlearn/mine/time_s": 1.0,
        "unlearn/time_s": 3.0,
        "unlearn/revoked_pairs": 12.0,
        "learn/test/recall@20": 0.1,
    }
    assert report.unlearning_methods(metrics) == ["contrastive", "retrain", "fru", "delete_only", "mine"]
    assert report.unlearning_methods(LEARN) == []


def test_comparison_rows() -> None:
    columns, rows = report.comparison_rows(unlearn_metrics())
    assert columns == [
        "method",
        "recall@20",
        "ndcg@20",
        "revoking recall@20",
        "forget hit@20",
        "mia auc",
        "time_s",
        "storage_bytes",
    ]
    assert [r[0] for r in rows] == ["before (learned)", "contrastive", "retrain", "fru", "delete_only"]
    assert rows[0] == ["before (learned)", 0.25, 0.2, 0.3, 0.6, 0.8, None, None]
    assert rows[1] == ["contrastive", 0.245, 0.195, 0.22, 0.07, 0.52, 12.345, 1.5 * 1024**2]
    assert rows[2] == ["retrain", 0.24, 0.19, 0.21, 0.05, 0.5, 120.0, 0]
    # a value the run did not write is None
    metrics = unlearn_metrics({"fru": AFTER["fru"]})
    del metrics["unlearn/fru/mia/auc"]
    assert report.comparison_rows(metrics)[1][1][5] is None


def test_k_taken_from_the_keys() -> None:
    metrics = unlearn_metrics(k=10)
    columns, rows = report.comparison_rows(metrics)
    assert columns[1] == "recall@10" and columns[4] == "forget hit@10"
    assert rows[2][1:6] == [0.24, 0.19, 0.21, 0.05, 0.5]
    # both K written: 20 unless asked otherwise
    both = metrics | unlearn_metrics()
    assert report.comparison_rows(both)[0][1] == "recall@20"
    assert report.comparison_rows(both, k=10)[0][1] == "recall@10"


def test_format_comparison() -> None:
    text = report.format_comparison(unlearn_metrics())
    lines = text.splitlines()
    assert lines[0].split() == [
        "method",
        "recall@20",
        "ndcg@20",
        "revoking",
        "recall@20",
        "forget",
        "hit@20",
        "mia",
        "auc",
        "time_s",
        "storage_bytes",
    ]
    assert len(lines) == 2 + 5
    by_method = {line.split("  ")[0].strip(): line for line in lines[2:]}
    assert list(by_method) == ["before (learned)", "contrastive", "retrain", "fru", "delete_only"]
    assert by_method["before (learned)"].split()[2:] == [
        "0.2500",
        "0.2000",
        "0.3000",
        "0.6000",
        "0.8000",
        "-",
        "-",
    ]
    assert by_method["contrastive"].split()[1:] == [
        "0.2450",
        "0.1950",
        "0.2200",
        "0.0700",
        "0.5200",
        "12.35",
        "1.5",
        "MB",
    ]
    assert by_method["fru"].split()[-3:] == ["3.46", "50.0", "MB"]
    assert by_method["retrain"].split()[-3:] == ["120.00", "0", "B"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    assert [report.human_bytes(n) for n in (512, 1000, 1024, 2048, 3 * 1024**3)] == [
        "512 B",
        "1000 B",
        "1.0 KB",
        "2.0 KB",
        "3.0 GB",
    ]


def test_write_figures(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    paths = report.write_figures(run)
    assert paths == [run / "unlearning_before_after.png", run / "unlearning_storage.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # a narrow storage range (linear axis), no retrain, missing values: still drawn
    metrics = unlearn_metrics({"fru": (0.2, 0.1, 0.2, 0.1, 0.6, 1.0, 1000), "finetune": AFTER["fru"]})
    del metrics["unlearn/finetune/storage_bytes"], metrics["learn/mia/auc"]
    assert report.plot_storage(metrics, tmp_path / "s.png").stat().st_size > 0
    assert report.plot_before_after(metrics, tmp_path / "b.png").stat().st_size > 0


def test_write_figures_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        report.write_figures(tmp_path)
    plain = make_run(tmp_path / "plain", LEARN | {"test/recall@20": 0.2})
    with pytest.raises(ValueError, match=r"plain/metrics\.json.*no unlearn/"):
        report.write_figures(plain)
    assert not list(plain.glob("*.png"))
    (plain / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"plain/metrics\.json"):
        report.write_figures(plain)
    with pytest.raises(ValueError, match="no unlearn/"):
        report.plot_storage(LEARN, tmp_path / "x.png")


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log(self, data: dict, **kwargs: object) -> None:
        self.logged.append(data)


def test_log_wandb() -> None:
    import wandb

    run = FakeRun()
    metrics = unlearn_metrics()
    report.log_wandb(run, metrics)
    assert len(run.logged) == 1
    logged = run.logged[0]
    charts = ["recall@20", "forget hit@20", "mia auc", "time_s", "storage_bytes"]
    assert set(logged) == {"unlearn/comparison", *(f"unlearn/chart/{c}" for c in charts)}
    table = logged["unlearn/comparison"]
    assert isinstance(table, wandb.Table)
    assert table.columns == report.comparison_rows(metrics)[0]
    assert [list(r) for r in table.data] == report.comparison_rows(metrics)[1]
    recall = logged["unlearn/chart/recall@20"]
    assert recall.table.columns == ["method", "recall@20"]
    assert recall.spec.fields == {"label": "method", "value": "recall@20"}
    assert [list(r) for r in recall.table.data] == [
        ["before (learned)", 0.25],
        ["contrastive", 0.245],
        ["retrain", 0.24],
        ["fru", 0.23],
        ["delete_only", 0.25],
    ]
    # the before row has no cost: not in the cost charts
    storage = logged["unlearn/chart/storage_bytes"].table
    assert [r[0] for r in storage.data] == ["contrastive", "retrain", "fru", "delete_only"]
    assert storage.data[2][1] == 50 * 1024**2


def test_find_unlearning_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "ml-100k" / "a" / "seed0")
    b = make_run(tmp_path / "b")
    make_run(tmp_path / "plain", LEARN | {"test/recall@20": 0.2})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{")
    (tmp_path / "empty").mkdir()
    assert report.find_unlearning_runs(tmp_path) == [b, a]
    assert report.find_unlearning_runs(str(b)) == [b]
    assert report.find_unlearning_runs(tmp_path / "nowhere") == []


def execute(tmp_path: Path) -> str:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "saved with outputs"
    )
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )


@pytest.mark.slow
def test_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path / "runs" / "ml-100k" / "seed0")
    make_run(tmp_path / "runs" / "plain", LEARN)
    monkeypatch.setenv("FEDSHARE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEDSHARE_REPORT_DIR", str(tmp_path / "report"))
    text = execute(tmp_path)
    assert "1 unlearning run(s)" in text
    assert "before (learned)" in text and "delete_only" in text
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["ml-100k_seed0_unlearning_before_after.png", "ml-100k_seed0_unlearning_storage.png"]
    assert all((tmp_path / "report" / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)

    # no unlearning run: says how to make one, and fails nothing
    monkeypatch.setenv("FEDSHARE_RUNS", str(tmp_path / "runs" / "plain"))
    monkeypatch.setenv("FEDSHARE_REPORT_DIR", str(tmp_path / "report2"))
    text = execute(tmp_path)
    assert "No unlearning runs found" in text and "experiment=fedshare_unlearn" in text
    assert not list((tmp_path / "report2").glob("*.png"))


# ------------------------------------------------------------------------------- results page
ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m fedshare.train experiment=fedshare_unlearn data=ml-1m data.root=/data/datasets"
# every check passes: recall gap 0.42%, MIA gap 0.0300, forget 0.0400 <= 0.5500, 60.0x,
# storage 10.00% of fru's and 2.50% of fedEraser's
PASSING = {
    "contrastive": (0.241, 0.19, 0.2, 0.04, 0.53, 2.0, 1024**2),
    "retrain": (0.24, 0.19, 0.21, 0.05, 0.5, 120.0, 0),
    "fedEraser": (0.22, 0.17, 0.2, 0.2, 0.6, 30.0, 40 * 1024**2),
    "fru": (0.23, 0.18, 0.2, 0.1, 0.55, 3.0, 10 * 1024**2),
    "delete_only": (0.25, 0.2, 0.29, 0.55, 0.78, 0.01, 0),
}


def make_page_run(
    folder: Path,
    methods: dict[str, tuple] = AFTER,
    data: str = "ml-1m",
    seed: int = 0,
    command: str | None = COMMAND,
    pngs: bool = False,
) -> Path:
    """A finished unlearning run folder as fedshare.train leaves it (config nested, as saved)."""
    metrics = unlearn_metrics(methods) | {
        "unlearn/requests": 17.0,
        "unlearn/revoked_pairs": 345.0,
        "unlearn/revoking_users": 12.0,
    }
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(
        f"data:\n  name: {data}\n  root: /data/datasets\nseed: {seed}\nfed:\n  rounds: 40\n"
        f"unlearn:\n  methods: [{', '.join(methods)}]\n  k: 20\n"
        "  requests:\n    file: null\n    user_fraction: 0.05\n    item_fraction: 0.5\n    seed: 0\n"
    )
    if command is not None:
        (folder / "command.txt").write_text(command + "\n")
    if pngs:
        (folder / "unlearning_before_after.png").write_bytes(PNG_MAGIC)
        (folder / "unlearning_storage.png").write_bytes(PNG_MAGIC)
    return folder


def sections(page: str) -> dict[str, str]:
    """``{heading: body}`` of the page's ``## `` sections."""
    parts = page.split("\n## ")[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def check_lines(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_results_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = make_page_run(tmp_path / "runs" / "ml-1m" / "seed0", pngs=True)
    passing = make_page_run(tmp_path / "runs" / "ml-100k" / "seed1", PASSING, "ml-100k", 1, command=None)
    out = tmp_path / "docs" / "UNLEARNING.md"
    argv = [str(failing), str(passing), "--out", str(out)]
    assert report_cli.main(argv) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["UNLEARNING.md"]  # no temp file left

    head = page.split("\n## ")[0]
    assert head.startswith("# Unlearning results\n")
    assert f"Generated by `python -m fedshare.report {' '.join(argv)}` from the runs' `metrics.json`" in head
    assert "no number on this page is typed by hand" in head
    assert " UTC." in head
    assert f"{platform.platform()}, torch " in head and f", {os.cpu_count()} CPUs." in head

    by_run = sections(page)
    assert list(by_run) == ["ml-1m, seed 0", "ml-100k, seed 1"]
    first, second = by_run.values()

    # the command, verbatim, in a bash block; the setup from config.yaml and metrics.json
    assert f"```bash\n{COMMAND}\n```" in first
    assert (
        "Setup: 40 federated rounds; 12 revoking users, 345 revoked pairs; request fractions: "
        "users 0.05, items 0.5; methods: retrain, fru, delete_only, contrastive." in first
    )
    # the table: comparison_rows' columns and rows, 4 decimals, time 2 decimals, storage human + raw
    rows = [line for line in first.splitlines() if line.startswith("|")]
    assert rows[0] == (
        "| method | recall@20 | ndcg@20 | revoking recall@20 | forget hit@20 | mia auc | time_s | storage_bytes |"
    )
    assert rows[2] == "| before (learned) | 0.2500 | 0.2000 | 0.3000 | 0.6000 | 0.8000 | - | - |"
    assert (
        rows[3] == "| contrastive | 0.2450 | 0.1950 | 0.2200 | 0.0700 | 0.5200 | 12.35 | 1.5 MB (1572864 B) |"
    )
    assert rows[4] == "| retrain | 0.2400 | 0.1900 | 0.2100 | 0.0500 | 0.5000 | 120.00 | 0 B |"
    assert rows[5] == "| fru | 0.2300 | 0.1800 | 0.2000 | 0.1000 | 0.5500 | 3.46 | 50.0 MB (52428800 B) |"
    assert [r.split(" | ")[0] for r in rows[2:]] == [
        "| before (learned)",
        "| contrastive",
        "| retrain",
        "| fru",
        "| delete_only",
    ]

    # computed checks: this run fails the recall gap and the speed-up
    assert check_lines(first) == [
        "- Recall@20 gap, contrastive vs retrain: |0.2450 - 0.2400| / 0.2400 = 2.08% (target ≤ 2%) — **FAIL**",
        "- MIA AUC gap, contrastive vs retrain: |0.5200 - 0.5000| = 0.0200 (target ≤ 0.05) — **PASS**",
        "- Forget Hit@20, contrastive vs delete_only: 0.0700 vs 0.5500 "
        "(target ≤ delete_only's: at least as strong; lower is more forgotten) — **PASS**",
        "- Speed-up over retrain: 120.00 s / 12.35 s = 9.7x (target ≥ 20x) — **FAIL**",
        "- Storage, contrastive vs fru: 1.5 MB / 50.0 MB = 3.00% (target ≤ 20% of fru's) — **PASS**",
        "- Storage, contrastive vs fedEraser: fedEraser not run (target ≤ 5% of fedEraser's) — n/a",
    ]
    assert "3 PASS, 2 FAIL, 1 n/a." in first
    # the PNGs, linked relative to the page's folder
    assert "![unlearning_before_after](../runs/ml-1m/seed0/unlearning_before_after.png)" in first
    assert "![unlearning_storage](../runs/ml-1m/seed0/unlearning_storage.png)" in first
    assert (out.parent / "../runs/ml-1m/seed0/unlearning_storage.png").is_file()

    # the other run: no command.txt, every check passes, no figures
    assert "command not recorded" in second and "```bash" not in second
    assert check_lines(second) == [
        "- Recall@20 gap, contrastive vs retrain: |0.2410 - 0.2400| / 0.2400 = 0.42% (target ≤ 2%) — **PASS**",
        "- MIA AUC gap, contrastive vs retrain: |0.5300 - 0.5000| = 0.0300 (target ≤ 0.05) — **PASS**",
        "- Forget Hit@20, contrastive vs delete_only: 0.0400 vs 0.5500 "
        "(target ≤ delete_only's: at least as strong; lower is more forgotten) — **PASS**",
        "- Speed-up over retrain: 120.00 s / 2.00 s = 60.0x (target ≥ 20x) — **PASS**",
        "- Storage, contrastive vs fru: 1.0 MB / 10.0 MB = 10.00% (target ≤ 20% of fru's) — **PASS**",
        "- Storage, contrastive vs fedEraser: 1.0 MB / 40.0 MB = 2.50% (target ≤ 5% of fedEraser's) — **PASS**",
    ]
    assert "6 PASS, 0 FAIL, 0 n/a." in second
    assert "![" not in second and "fedEraser | 0.2200" in second


def test_results_page_png_links_follow_the_out_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_page_run(tmp_path / "runs" / "a", pngs=True)
    monkeypatch.chdir(tmp_path)
    assert report_cli.main(["runs/a", "--out", "UNLEARNING.md"]) == 0
    page = (tmp_path / "UNLEARNING.md").read_text()
    assert "`python -m fedshare.report runs/a --out UNLEARNING.md`" in page  # paths as given
    assert "Run folder: `runs/a`" in page
    assert "(runs/a/unlearning_before_after.png)" in page
    assert report_cli.main(["runs/a", "--out", "docs/deep/UNLEARNING.md"]) == 0
    assert "(../../runs/a/unlearning_storage.png)" in (tmp_path / "docs/deep/UNLEARNING.md").read_text()
    # a path with a space is kept whole in the link
    make_page_run(tmp_path / "my runs" / "b", pngs=True)
    assert report_cli.main(["my runs/b", "--out", "docs/UNLEARNING.md"]) == 0
    assert "(<../my runs/b/unlearning_storage.png>)" in (tmp_path / "docs/UNLEARNING.md").read_text()


def test_checks_edge_cases() -> None:
    # exactly on a target passes (0.55 - 0.5 is 0.05000000000000004 in floats)
    metrics = unlearn_metrics(
        {
            "contrastive": (0.2448, 0.19, 0.2, 0.6, 0.55, 6.0, 10.0),
            "retrain": (0.24, 0.19, 0.21, 0.05, 0.5, 120.0, 0),
            "delete_only": (0.25, 0.2, 0.29, 0.55, 0.78, 0.01, 0),
            "fru": (0.2, 0.1, 0.2, 0.1, 0.6, 1.0, 0),
        }
    )
    found = {c.name: c for c in report.checks(metrics)}
    assert found["MIA AUC gap, contrastive vs retrain"].status == "PASS"
    assert found["Recall@20 gap, contrastive vs retrain"].text.startswith(
        "|0.2448 - 0.2400| / 0.2400 = 2.00% "
    )
    assert found["Recall@20 gap, contrastive vs retrain"].status == "PASS"
    assert found["Speed-up over retrain"].status == "PASS"  # 20.0x
    # forget worse than delete_only's fails; fru keeping nothing cannot be divided by
    assert found["Forget Hit@20, contrastive vs delete_only"].status == "FAIL"
    assert found["Storage, contrastive vs fru"].status == "n/a"
    assert "fru's storage_bytes is 0" in found["Storage, contrastive vs fru"].text

    # a value the run did not write: n/a, never PASS; delete_only absent: said so
    del metrics["unlearn/contrastive/mia/auc"], metrics["unlearn/delete_only/forget/hit@20"]
    metrics = {k: v for k, v in metrics.items() if not k.startswith("unlearn/delete_only/")}
    found = {c.name: c for c in report.checks(metrics)}
    mia = found["MIA AUC gap, contrastive vs retrain"]
    assert mia.status == "n/a" and "contrastive's mia auc not recorded" in mia.text
    forget = found["Forget Hit@20, contrastive vs delete_only"]
    assert forget.status == "n/a" and forget.text.startswith("delete_only not run")

    # no retrain (or no contrastive): no checks
    assert report.checks(unlearn_metrics({"contrastive": AFTER["contrastive"]})) is None
    assert report.checks(unlearn_metrics({"retrain": AFTER["retrain"]})) is None


def test_results_page_without_retrain_or_config(tmp_path: Path) -> None:
    run = make_page_run(tmp_path / "run", {"contrastive": AFTER["contrastive"], "fru": AFTER["fru"]})
    (run / "config.yaml").unlink()
    out = tmp_path / "page.md"
    assert report_cli.main([str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "## unknown data, seed not recorded" in page
    assert "(no readable config.yaml)" in page
    assert "Setup: not recorded federated rounds; 12 revoking users, 345 revoked pairs" in page
    assert "Not computed: needs both contrastive and retrain; this run has contrastive, fru." in page
    assert "PASS" not in page and "FAIL" not in page


def test_results_page_bad_folder_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_page_run(tmp_path / "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    plain = make_run(tmp_path / "plain", LEARN | {"test/recall@20": 0.2})
    out = tmp_path / "docs" / "UNLEARNING.md"
    assert report_cli.main([str(good), str(empty), str(plain), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run folder {empty}: {empty / 'metrics.json'}: no such file" in err
    assert f"run folder {plain}: {plain / 'metrics.json'}: no unlearn/<method>/... keys" in err
    assert f"nothing written to {out}" in err
    assert str(good) not in err
    assert not out.parent.exists()
    # an existing page is left as it was
    out.parent.mkdir()
    out.write_text("old page\n")
    assert report_cli.main([str(empty), str(good), "--out", str(out)]) == 2
    assert out.read_text() == "old page\n" and [p.name for p in out.parent.iterdir()] == ["UNLEARNING.md"]


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    page = folder / "page.md"
    page.write_text("old\n")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(page, "new\n")
    assert page.read_text() == "old\n" and [p.name for p in folder.iterdir()] == ["page.md"]
    monkeypatch.undo()
    atomic.write_text(page, "new\n")
    assert page.read_text() == "new\n" and [p.name for p in folder.iterdir()] == ["page.md"]


def test_results_page_command_line(tmp_path: Path) -> None:
    run = make_page_run(tmp_path / "run")
    out = tmp_path / "page.md"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "fedshare.report", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "## ml-1m, seed 0" in out.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "fedshare.report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.md")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2 and "nope" in done.stderr and not (tmp_path / "x.md").exists()
