"""What the unlearning baselines record while FedShare learns (fedshare/unlearning/baselines.py).

- `FedEraserRecorder`: at round 1 and every ``every`` rounds, the cohort's item-row updates,
  the server's graph-table update and ``Q`` after aggregation: one file per stored round.
- `FRURecorder`: every round, each device's top-α item-row updates (``store/devices/``) and
  the server's top-α row updates of ``user0``, ``item0`` and ``Q`` (``store/server/``).

Round ``r`` is epoch ``r - 1``; FedShare's round runs entirely in ``training_step``, between
the callbacks' ``on_train_epoch_start`` (the tables before) and ``on_train_epoch_end`` (after).
The clients' updates come through ``clients.change_recorder`` (a shared `RoundChanges`,
installed for a round in which a recorder is due, removed at its end; recorders due in the
same round share it), so recording costs nothing in rounds that keep nothing. Sanity checks
and fast_dev_run are no rounds: nothing is kept.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch import Tensor

from fedshare.federated.rounds import fedavg_rows
from fedshare.unlearning.baselines import (
    ERASER_EVERY,
    FRU_ALPHA,
    HistoryStore,
    RoundChanges,
    install_changes,
    remove_changes,
    server_tables,
    top_rows,
)


class _RoundRecorder(pl.Callback):
    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._before: dict[str, Tensor] | None = None
        self._changes: RoundChanges | None = None

    def due(self, round_: int) -> bool:
        raise NotImplementedError

    def record(self, round_: int, pl_module: pl.LightningModule, before: dict[str, Tensor]) -> None:
        raise NotImplementedError

    @staticmethod
    def _skip(trainer: pl.Trainer) -> bool:
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before = None
        if self._skip(trainer) or not self.due(trainer.current_epoch + 1):
            return
        server = getattr(pl_module, "server", None)
        if server is None or not hasattr(server, "user0"):
            raise TypeError(
                f"{type(self).__name__}: {type(pl_module).__name__} has no graph server (model=fedshare)"
            )
        self._changes = install_changes(pl_module.clients, server.item_emb.shape[0])
        self._before = server_tables(server)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._before is None or self._skip(trainer):
            return
        before, self._before = self._before, None
        remove_changes(pl_module.clients)  # a recorder due next round installs one again
        try:
            self.record(trainer.current_epoch + 1, pl_module, before)
        finally:
            self._changes = None  # the round's rows are freed once every recorder has kept its part

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        remove_changes(pl_module.clients)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        remove_changes(pl_module.clients)

    def _round_changes(self, round_: int):
        changes = self._changes.result() if self._changes is not None else None
        if changes is None:
            raise RuntimeError(f"{type(self).__name__}: round {round_} trained no clients through the hook")
        return changes


class FedEraserRecorder(_RoundRecorder):
    """FedEraser's history: round 1 and every ``every`` rounds (``store/round-rXXXXX.safetensors``)."""

    def __init__(self, store: Path, every: int = ERASER_EVERY) -> None:
        super().__init__(store)
        if int(every) < 1:
            raise ValueError(f"FedEraserRecorder: every must be >= 1, got {every!r}")
        self.every = int(every)
        self.history = HistoryStore(self.store)

    def due(self, round_: int) -> bool:
        return round_ == 1 or round_ % self.every == 0

    def record(self, round_: int, pl_module: pl.LightningModule, before: dict[str, Tensor]) -> None:
        server = pl_module.server
        changes = self._round_changes(round_)
        after = server_tables(server)
        n_items = after["q"].shape[0]
        q_agg = fedavg_rows(before["q"], changes.upload(n_items), float(server.server_lr))
        self.history.save(
            round_,
            {
                **changes.tensors(),
                "user0_update": (after["user0"] - before["user0"]).float(),
                "item0_update": (after["item0"] - before["item0"]).float(),
                "q": q_agg.float(),
            },
        )


class FRURecorder(_RoundRecorder):
    """FRU's history, every round: devices' top-α updates and the server's top-α row updates."""

    def __init__(self, store: Path, alpha: float = FRU_ALPHA) -> None:
        super().__init__(store)
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"FRURecorder: alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.devices = HistoryStore(self.store / "devices")
        self.server = HistoryStore(self.store / "server")

    def due(self, round_: int) -> bool:
        return True

    def record(self, round_: int, pl_module: pl.LightningModule, before: dict[str, Tensor]) -> None:
        full = self._round_changes(round_)
        changes = full.top_alpha(self.alpha)
        self.devices.save(round_, changes.tensors())
        after = server_tables(pl_module.server)
        # FedAvg's denominators of the round (what the server received with the sums): replaying
        # the top-α rows over them, not over their own weights, keeps each row's step unbiased
        # in scale; over their own weights the largest updates alone drove Q away (ML-1M: recall 0)
        n_items = after["q"].shape[0]
        tensors: dict[str, Tensor] = {"q.weight_sum": full.upload(n_items).weight_sum.float()}
        for name, table in after.items():
            rows, updates = top_rows(table - before[name], self.alpha)
            tensors[f"{name}.rows"], tensors[f"{name}.updates"] = rows, updates
        self.server.save(round_, tensors)
