"""A progress bar over federated rounds.

Lightning's default bar restarts every epoch; with one epoch per round and one batch per
epoch it would print a new bar each round. This one advances once per round and shows the
latest loss and validation metric.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm


class RoundProgressBar(ProgressBar):
    def __init__(self, watch: str = "val/recall@20") -> None:
        super().__init__()
        self.watch = watch
        self._bar: tqdm | None = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self._bar = tqdm(
                total=trainer.max_epochs,
                initial=trainer.current_epoch,
                desc="rounds",
                unit="round",
                file=sys.stdout,
                dynamic_ncols=True,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is None:
            return
        metrics = trainer.callback_metrics
        postfix = {}
        if "train/loss" in metrics:
            postfix["loss"] = f"{float(metrics['train/loss']):.4f}"
        if self.watch in metrics:
            postfix[self.watch.split("/")[-1]] = f"{float(metrics[self.watch]):.4f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
