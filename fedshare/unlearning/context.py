"""What every unlearning method gets (`UnlearnContext`) and what a recorder is (`Recorder`).

A method is ``fn(ctx: UnlearnContext) -> module``: given the learned model before deletion,
the revoked pairs, the data and its own store folder, it returns a model from which the revoked
pairs are gone. A method that needs a history of the learning phase names a `Recorder` in the
registry (`fedshare.unlearning.registry`); the run driver calls the recorder's hooks around
every round, in-process (through one Lightning callback) and on Flower alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from fedshare.eval.selection import Selection
from fedshare.unlearning.judge import validation


@dataclass
class UnlearnContext:
    learned: Any  # FedShareModule after learning, before any deletion; methods copy it
    dm: Any  # the FederatedDataModule of the run
    users: Tensor  # revoked pairs (user, item), int64 CPU
    items: Tensor
    rounds: int  # rounds of the learning phase
    options: dict[str, Any]  # the method's own section of cfg.unlearn
    store: Path  # the method's store folder in the run
    build: Callable[[Any], Any]  # dm -> a fresh module with the run's config (for retrain)
    snapshots: Any = None  # SnapshotStore of the learning phase (contrastive)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``, counted on disk (0 if it does not exist)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def train_selected(ctx: UnlearnContext, model, first: int, last: int, start_is_candidate: bool = False):
    """Trains ``model`` for rounds ``first..last`` and returns the model of the best validated
    round, selected as the learning phase selects (`fedshare.eval.selection`: ``eval.monitor``,
    ties keep the earlier round, ``eval.patience`` stops early). It validates every
    ``eval.every`` rounds counted from ``first``, and the last round; ``start_is_candidate``
    validates the model it was given too (a deleted copy is a model; a fresh one is not).
    Without a validation split or with ``eval.monitor`` null, the last round's model. The
    returned module's ``selected_round`` names its round (the phase writes it into metrics.json)."""
    cfg = ctx.dm.cfg
    selection = Selection.for_run(cfg, bool(ctx.dm.valid.items.size), ctx.dm.val_split)
    every, batch = max(1, int(cfg.eval.every)), int(cfg.eval.batch_users)
    best = None

    def validate(round_: int) -> None:
        nonlocal best
        if selection.update({"round": round_, **validation(model, ctx.dm.n_users, batch)}):
            best = copy.deepcopy(model)
            best.selected_round = round_

    if selection.active and start_is_candidate:
        validate(first - 1)
    optimizer = model.configure_optimizers()
    for r in range(first, last + 1):
        model.run_round(r, optimizer)
        model.selected_round = r
        if selection.active and ((r - first + 1) % every == 0 or r == last):
            validate(r)
            if selection.should_stop:
                break
    return model if best is None else best


def deleted_copy(ctx: UnlearnContext):
    model = copy.deepcopy(ctx.learned)
    model.unshare(ctx.users, ctx.items)
    return model


class Recorder:
    """What a method keeps while the model learns, in its store folder.

    Hooks (``round_`` counts from 1; a hook of a round that is not kept does nothing):
    ``start(module, done)`` before the first round this process trains (``done`` rounds were
    trained before: 0 for a new run, more for a resumed one), ``before_round`` / ``after_round``
    around each round, ``close(module)`` at the end, also after an error. ``artifact``: the W&B
    artifact type under which the store folder is logged at the end, or None.
    """

    store: Path
    artifact: str | None = None

    def start(self, module: Any, done: int) -> None:
        return None

    def before_round(self, round_: int, module: Any) -> None:
        return None

    def after_round(self, round_: int, module: Any) -> None:
        return None

    def close(self, module: Any) -> None:
        return None
