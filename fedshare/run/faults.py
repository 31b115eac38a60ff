"""Fault injection for crash-recovery tests: real crashes, at chosen points, from outside.

``FEDSHARE_FAULT_KILL_AT_ROUND=N`` makes a training process kill itself with SIGKILL (no
clean-up, no exception handlers: as if the machine lost power) when round N starts, i.e.
after everything of round N-1, its checkpoint included, is on disk. Unset: nothing happens.
``FEDSHARE_FAULT_KILL_AT_TRIAL=T`` does the same to a search (`fedshare.tuning.search`) in
round 2 of its trial T, once earlier trials are in its study.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl

ENV_KILL_AT_ROUND = "FEDSHARE_FAULT_KILL_AT_ROUND"
ENV_KILL_AT_TRIAL = "FEDSHARE_FAULT_KILL_AT_TRIAL"


class KillAtRound(pl.Callback):
    def __init__(self, round_: int) -> None:
        self.round = round_

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.round:
            os.kill(os.getpid(), signal.SIGKILL)


def fault_callbacks() -> list[pl.Callback]:
    value = os.environ.get(ENV_KILL_AT_ROUND)
    if not value:
        return []
    try:
        return [KillAtRound(int(value))]
    except ValueError:
        raise ValueError(f"{ENV_KILL_AT_ROUND}={value!r} is not a round number (an integer >= 1)") from None


def trial_faults(number: int) -> list[pl.Callback]:
    """The fault of a search's trial ``number`` (``FEDSHARE_FAULT_KILL_AT_TRIAL``), if any."""
    value = os.environ.get(ENV_KILL_AT_TRIAL)
    return [KillAtRound(2)] if value and int(value) == number else []
