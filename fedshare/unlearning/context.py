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
