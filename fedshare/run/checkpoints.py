"""Checkpoints written so that a crash never leaves a half-written file behind.

Lightning writes ``last.ckpt`` in place; a process killed during the write would leave a
truncated file that ``resume=true`` cannot load. Here every checkpoint goes to a temporary
file in the same folder first and replaces the old one in one ``os.replace``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from fedshare.atomic import replace_file
from fedshare.eval.selection import Selection


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        replace_file(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every`` rounds and at the last round.

    Lightning's ModelCheckpoint (2.6) only refreshes ``last.ckpt`` together with a top-k
    checkpoint; a resumable run needs the latest round on disk, whatever was monitored. A run
    killed between two checkpoints resumes from the earlier one and repeats those rounds
    exactly (every generator state is in the checkpoint).
    """

    def __init__(self, dirpath: Path, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint.every must be an int >= 1, got {every!r}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        done = trainer.current_epoch + 1
        if done % self.every == 0 or done >= trainer.max_epochs or trainer.should_stop:
            trainer.save_checkpoint(self.path, weights_only=False)  # full state: resumable


class BestCheckpoint(pl.Callback):
    """Writes ``<dirpath>/best.ckpt`` (the full state, atomically) after each validation that is
    a new best of the run's `Selection`, and stops training once ``eval.patience`` validations
    passed without one. Its state (the best value and round, the validations since) is in every
    checkpoint, so a resumed run selects as the uninterrupted one would."""

    def __init__(self, dirpath: Path, selection: Selection) -> None:
        self.path = Path(dirpath) / "best.ckpt"
        self.selection = selection

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not self.selection.active:
            return
        if self.selection.update(pl_module.history["val"][-1]):
            trainer.save_checkpoint(self.path, weights_only=False)
        if self.selection.should_stop:
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.selection.should_stop:  # resumed after the stop was decided, before the test
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return self.selection.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selection.load_state_dict(state_dict)
