"""Every notebook executes on a tiny finished run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fedshare import train as train_mod
from fedshare.config import compose

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_a_tiny_run(tiny: list[str], path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = [*tiny, "fed.rounds=2", "logger=none", "unlearn.methods=[contrastive,retrain]"]
    train_mod.train(compose([*run, f"paths.output_dir={tmp_path / 'runs' / 'a'}"]))
    monkeypatch.setenv("FEDSHARE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEDSHARE_REPORT_DIR", str(tmp_path / "report"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    pngs = [p.name for p in (tmp_path / "report").glob("*.png")]
    assert pngs
    if path.name == "unlearning_report.ipynb":  # drew the real unlearning run, not the empty case
        assert any("unlearning_before_after" in name for name in pngs), pngs
