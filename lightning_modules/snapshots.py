"""Saves the server's embedding snapshots at chosen rounds while a run trains.

Round 0 is the state before the first round (saved at train start); round ``r >= 1`` is the
state after round ``r``, i.e. at the end of epoch ``r - 1``. The module decides what a
snapshot holds through ``snapshot_tensors()``, so this callback works for any model that
provides it.

Lightning calls a callback's ``on_train_epoch_end`` *before* the module's own: a module
whose round finishes in its ``on_train_epoch_end`` would be snapshotted one step early.
FedShare's round runs entirely in ``training_step``, so the snapshot is the finished round.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytorch_lightning as pl

from fedshare.unlearning.snapshots import SnapshotStore


class SnapshotCallback(pl.Callback):
    def __init__(self, store: SnapshotStore, rounds: Iterable[int]) -> None:
        self.store = store
        self.rounds = sorted(set(rounds))

    @staticmethod
    def _skip(trainer: pl.Trainer) -> bool:
        # sanity checks and fast_dev_run are not real rounds: their state must not be kept
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def _save(self, round_: int, pl_module: pl.LightningModule) -> None:
        snapshot_tensors = getattr(pl_module, "snapshot_tensors", None)
        if not callable(snapshot_tensors):
            raise TypeError(
                f"SnapshotCallback: {type(pl_module).__name__} has no snapshot_tensors(); "
                "unlearn.snapshots needs a model that provides it"
            )
        self.store.save(round_, snapshot_tensors())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed run (current_epoch > 0) already saved round 0 before it was stopped
        if self._skip(trainer) or trainer.current_epoch != 0 or 0 not in self.rounds:
            return
        self._save(0, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        done = trainer.current_epoch + 1
        if done in self.rounds:
            self._save(done, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Uploads the folder to W&B as one artifact, so an offline run's snapshots travel with it."""
        if self._skip(trainer):
            return
        from pytorch_lightning.loggers import WandbLogger

        logger = trainer.logger
        if not isinstance(logger, WandbLogger) or not self.store.folder.is_dir():
            return
        import wandb

        artifact = wandb.Artifact(name=f"snapshots-{logger.experiment.id}", type="snapshots")
        artifact.add_dir(str(self.store.folder))
        logger.experiment.log_artifact(artifact)
