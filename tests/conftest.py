"""Shared fixtures: tiny synthetic data, W&B and home folders kept under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Small enough that a whole train+test run takes a second or two on CPU.
TINY = [
    "data.synthetic.n_users=60",
    "data.synthetic.n_items=120",
    "data.synthetic.n_interactions=2400",
    "data.synthetic.n_communities=4",
    "eval.batch_users=25",
    "trainer.enable_progress_bar=false",
    "unlearn.methods=[]",  # learning only; tests of unlearning set their methods after this
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test runs may write into the real home folder or talk to W&B's servers."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("FEDSHARE_DATA", str(tmp_path / "datasets"))
    return home


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)
