"""Model selection on validation: which validated round's model is tested, and when to stop.

Every run validates every ``eval.every`` rounds. The test stage and the unlearning phase use
the model of the best validated round by ``eval.monitor`` (higher is better), not the last
round's; ``eval.patience`` stops training after that many validations without a new best.
In-process, `fedshare.run.checkpoints.BestCheckpoint` keeps that model in
``checkpoints/best.ckpt``; on Flower the ServerApp keeps the server's part and the nodes keep
their clients' rows of that round. Both use this one rule, so they select the same round.

No selection happens (the last round is tested, as before) when ``eval.monitor`` is null, or
when there is nothing to select on: no validation split (a test-only learning curve,
``eval.curve``, is never selected on) or no validation due.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class Selection:
    """The best validation so far of one monitored key, and the validations since it."""

    def __init__(self, monitor: str | None, patience: int | None) -> None:
        self.monitor, self.patience = monitor, patience
        self.best_value: float | None = None
        self.best_round: int | None = None
        self.stale = 0  # validations since the best

    @classmethod
    def for_run(cls, cfg: DictConfig, validates: bool, val_split: str) -> Selection:
        """The run's selection; inactive (``monitor`` None) without a validation split to select on."""
        active = validates and val_split != "test" and cfg.eval.get("monitor") is not None
        patience = cfg.eval.get("patience")
        return cls(str(cfg.eval.monitor) if active else None, None if patience is None else int(patience))

    @property
    def active(self) -> bool:
        return self.monitor is not None

    def update(self, entry: dict[str, float]) -> bool:
        """Takes one validation (a ``history.json`` entry, with its ``round``); True if it is
        the new best (ties keep the earlier round: fewer rounds for the same number)."""
        if not self.active:
            return False
        if self.monitor not in entry:
            keys = ", ".join(k for k in entry if k != "round")
            raise KeyError(f"eval.monitor={self.monitor} is not in round {entry.get('round')}'s validation: {keys}")
        value = float(entry[self.monitor])
        if math.isnan(value):
            value = -math.inf
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_round, self.stale = value, int(entry["round"]), 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.active and self.patience is not None and self.stale >= self.patience

    def metrics(self, rounds_done: int) -> dict[str, float]:
        """``best_round`` for metrics.json: the tested model's round (the last one without selection)."""
        return {"best_round": float(self.best_round if self.best_round is not None else rounds_done)}

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_round": self.best_round, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_round = state.get("best_value"), state.get("best_round")
        self.stale = int(state.get("stale", 0))


def selected_round(run_dir: Path, default: int) -> int:
    """The round of a run's learned model: ``best_round`` in its metrics.json (``default`` for a
    run from before selection, or before its metrics were written)."""
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    return int(metrics.get("best_round", default))
