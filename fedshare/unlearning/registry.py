"""The one list of unlearning methods: each is one entry of `METHODS`, every other list reads it.

An entry says what the method is called, the function that unlearns (``fn(ctx) -> module``,
`fedshare.unlearning.context.UnlearnContext`), what it records while the model learns and the
`Recorder` that records it (built from the run's ``unlearn`` config and the method's store
folder ``run/unlearn/<name>/``), whether the server alone can run it on Flower (no client
rounds), and its label in reports. Its options are the keys of ``unlearn.<name>`` in
``configs/config.yaml``, where their defaults live.

Adding a method: one module in this package with its function (and its recorder, if it needs a
history), one `Method` entry below, and its options under ``unlearn.<name>`` in the YAML.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshare.unlearning import contrastive, delete_only, fed_eraser, finetune, fru, retrain
from fedshare.unlearning.context import Recorder, UnlearnContext
from fedshare.unlearning.snapshots import SnapshotStore, snapshot_rounds


@dataclass(frozen=True)
class Method:
    name: str  # the name in unlearn.methods and in the metrics' keys (unlearn/<name>/...)
    run: Callable[[UnlearnContext], Any]
    records: str  # what the method keeps while learning ("" for nothing)
    recorder: Callable[[Mapping[str, Any], int, Path], Recorder] | None  # (cfg.unlearn, fed.rounds, store)
    on_flower: bool  # the server runs it on its own tables (no client rounds, no client history)
    label: str  # in tables, pages and plots
    uses_snapshots: bool = False  # gets the learning phase's snapshots (ctx.snapshots)


def _snapshots(ucfg: Mapping[str, Any], rounds: int, store: Path) -> Recorder:
    return contrastive.SnapshotRecorder(
        SnapshotStore(store / "snapshots"), snapshot_rounds(ucfg["snapshots"], rounds)
    )


def _fed_eraser(ucfg: Mapping[str, Any], rounds: int, store: Path) -> Recorder:
    return fed_eraser.FedEraserRecorder(store, every=int(ucfg["fedEraser"]["every"]))


def _fru(ucfg: Mapping[str, Any], rounds: int, store: Path) -> Recorder:
    return fru.FRURecorder(store, alpha=float(ucfg["fru"]["alpha"]))


_ENTRIES = [
    Method(
        "contrastive",
        contrastive.contrastive,
        "embedding snapshots of the graph's layer-0 tables and Q at unlearn.snapshots rounds",
        _snapshots,
        on_flower=True,
        label="contrastive",
        uses_snapshots=True,
    ),
    Method("retrain", retrain.retrain, "", None, on_flower=False, label="retrain"),
    Method(
        "fedEraser",
        fed_eraser.fed_eraser,
        "the cohort's item-row updates, the graph-table update and Q at round 1 and every unlearn.fedEraser.every rounds",
        _fed_eraser,
        on_flower=False,
        label="fedEraser",
    ),
    Method(
        "fru",
        fru.fru,
        "every round: each device's top-alpha item-row updates and the server's top-alpha table rows",
        _fru,
        on_flower=False,
        label="fru",
    ),
    Method("finetune", finetune.finetune, "", None, on_flower=False, label="finetune"),
    Method("delete_only", delete_only.delete_only, "", None, on_flower=True, label="delete_only"),
]
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}
REFERENCE = "retrain"  # the exact, costly method every other is judged against


def names(on_flower: bool | None = None) -> list[str]:
    """The methods' names in registry order (only those that run on Flower, or only not, if asked)."""
    return [m.name for m in _ENTRIES if on_flower is None or m.on_flower == on_flower]


def label(name: str) -> str:
    """A method's label in reports (a name the registry does not know is shown as it is)."""
    return METHODS[name].label if name in METHODS else name


def check_config(cfg: Any) -> None:
    """``unlearn.methods``: known, listed once, and only with a graph to unlearn (ValueError naming the key)."""
    methods = list(cfg.unlearn.methods or [])
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unlearn.methods: unknown method {m!r}; accepted: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"unlearn.methods lists a method twice: {methods}")
    if methods and cfg.model.name != "fedshare":
        raise ValueError(
            f"unlearn.methods needs model=fedshare (a server graph to unlearn), got model={cfg.model.name}; "
            f"use experiment={cfg.model.name} or unlearn.methods=[] for learning only"
        )


def store_dir(run_dir: Path, name: str) -> Path:
    """The method's store folder in a run: everything it records, counted as its storage."""
    return run_dir / "unlearn" / name


def recorders(cfg: Any, run_dir: Path, methods: list[str]) -> list[Recorder]:
    """The recorders of ``methods`` (registry order), each writing into its method's store."""
    rounds = int(cfg.fed.rounds)
    return [
        m.recorder(cfg.unlearn, rounds, store_dir(run_dir, m.name))
        for m in _ENTRIES
        if m.name in methods and m.recorder is not None
    ]


def run_method(name: str, ctx: UnlearnContext) -> tuple[Any, float]:
    """The unlearned model and the method's wall time in seconds."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; accepted: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    model = METHODS[name].run(ctx)
    return model, time.perf_counter() - t0
