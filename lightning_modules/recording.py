"""One Lightning callback that drives the unlearning methods' recorders while a run learns.

The recorders (`fedshare.unlearning.context.Recorder`: snapshots for ``contrastive``, the
baselines' histories) know nothing of Lightning; the registry builds them from the config and
this callback calls their hooks. Round ``r`` is epoch ``r - 1``; FedShare's round runs entirely
in ``training_step``, between ``on_train_epoch_start`` (the tables before) and
``on_train_epoch_end`` (after). Lightning calls a callback's ``on_train_epoch_end`` before the
module's own, so a module whose round finished there would be recorded one step early.
Sanity checks and fast_dev_run are no rounds: nothing is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytorch_lightning as pl

from fedshare.unlearning.context import Recorder


class RecorderCallback(pl.Callback):
    def __init__(self, recorders: Iterable[Recorder]) -> None:
        self.recorders = list(recorders)

    @staticmethod
    def _skip(trainer: pl.Trainer) -> bool:
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer):
            for rec in self.recorders:
                rec.start(pl_module, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer):
            for rec in self.recorders:
                rec.before_round(trainer.current_epoch + 1, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer):
            for rec in self.recorders:
                rec.after_round(trainer.current_epoch + 1, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for rec in self.recorders:
            rec.close(pl_module)
        if not self._skip(trainer):
            self._log_artifacts(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        for rec in self.recorders:
            rec.close(pl_module)

    def _log_artifacts(self, trainer: pl.Trainer) -> None:
        """Each store that asks for it goes to W&B as one artifact, so an offline run's store travels with it."""
        from pytorch_lightning.loggers import WandbLogger  # W&B only when a run logs to it

        logger = trainer.logger
        if not isinstance(logger, WandbLogger):
            return
        import wandb  # as above

        for rec in self.recorders:
            if rec.artifact and rec.store.is_dir():
                artifact = wandb.Artifact(name=f"{rec.artifact}-{logger.experiment.id}", type=rec.artifact)
                artifact.add_dir(str(rec.store))
                logger.experiment.log_artifact(artifact)
