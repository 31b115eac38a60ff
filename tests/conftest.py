"""Shared fixtures: tiny synthetic data, W&B and home folders kept under tmp_path; the YAML's
constructor keywords (`model_kwargs`, `sharing_cfg`) and data configs (`data_cfg`), since the code
holds no defaults."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

# Small enough that a whole train+test run takes a second or two on CPU (tests use the `tiny` fixture)
_TINY = (
    "data.synthetic.n_users=60",
    "data.synthetic.n_items=120",
    "data.synthetic.n_interactions=2400",
    "data.synthetic.n_communities=4",
    "eval.batch_users=25",
    "trainer.enable_progress_bar=false",
    "unlearn.methods=[]",  # learning only; tests of unlearning set their methods after this
)


@functools.cache
def _composed(choice: str) -> dict[str, Any]:
    """The YAML's config with one group choice (``model=fedmf``), no overlay: plain containers."""
    from fedshare.config import compose
    from fedshare.run.build import model_kwargs as kwargs_of

    cfg = compose([choice, "experiment=null"])
    return {"model": kwargs_of(cfg), "sharing": OmegaConf.to_container(cfg.sharing, resolve=True)}


def _with(base: dict[str, Any], overrides: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(base))
    if unknown:  # a typo would otherwise test nothing
        raise TypeError(f"{what} has no key(s) {unknown}; keys: {', '.join(base)}")
    return {**copy.deepcopy(base), **overrides}


def model_kwargs(name: str, /, **overrides: Any) -> dict[str, Any]:
    """The keywords ``fedshare.run.build.new_model`` passes to model ``name``'s module, from the
    composed YAML (configs/model/<name>.yaml, fed.*, seed, eval.ks), with ``overrides``: tests
    never re-type a default (the modules have none)."""
    return _with(_composed(f"model={name}")["model"], overrides, f"model={name}")


def sharing_cfg(policy: str, /, **overrides: Any) -> dict[str, Any]:
    """The ``sharing`` group of configs/sharing/<policy>.yaml as a dict, with ``overrides``
    (``key=None`` stands for a missing key)."""
    return _with(_composed(f"sharing={policy}")["sharing"], overrides, f"sharing={policy}")


def data_cfg(name: str, /, **overrides: Any) -> dict[str, Any]:
    """The ``data`` group of configs/data/<name>.yaml as a dict (every key: the loader fills in
    none), with ``overrides`` replacing whole top-level values."""
    from fedshare.config import compose  # not via _composed: no model (torch) needed here

    data = OmegaConf.to_container(compose([f"data={name}", "experiment=null"]).data, resolve=True)
    return _with(data, overrides, f"data={name}")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test runs may write into the real home folder or talk to W&B's servers."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("FEDSHARE_DATA", str(tmp_path / "datasets"))
    return home


@pytest.fixture(scope="session")
def tiny() -> tuple[str, ...]:
    """Overrides for a tiny synthetic run (a tuple: no test can change it for the others)."""
    return _TINY
