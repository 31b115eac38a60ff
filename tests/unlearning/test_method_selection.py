"""The unlearning methods that train (retrain, finetune) select their round on validation as
the learning phase does: best validated round, ties to the earlier, patience stops early."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedshare.unlearning import context


class Counter:
    """A module whose only state is the rounds it trained."""

    def __init__(self) -> None:
        self.trained: list[int] = []

    def configure_optimizers(self) -> None:
        return None

    def run_round(self, round_: int, optimizer) -> None:
        self.trained.append(round_)


def _ctx(every: int = 1, patience: int | None = None, monitor: str | None = "val/recall@20", valid: int = 3):
    cfg = OmegaConf.create(
        {"eval": {"every": every, "patience": patience, "monitor": monitor, "batch_users": 8}, "fed": {"rounds": 9}}
    )
    dm = SimpleNamespace(cfg=cfg, valid=SimpleNamespace(items=np.ones(valid)), val_split="valid", n_users=4)
    return SimpleNamespace(dm=dm)


@pytest.fixture
def curve(monkeypatch: pytest.MonkeyPatch):
    """Validation Recall@20 by the number of rounds the model has trained (0: the start)."""
    values: dict[int, float] = {}
    seen: list[int] = []

    def validation(model, n_users: int, batch_users: int) -> dict[str, float]:
        seen.append(len(model.trained))
        return {"val/recall@20": values[len(model.trained)], "val/ndcg@20": 0.0}

    monkeypatch.setattr(context, "validation", validation)
    return values, seen


def test_the_best_validated_round_is_returned_not_the_last(curve) -> None:
    values, seen = curve
    values.update({1: 0.1, 2: 0.3, 3: 0.2, 4: 0.3, 5: 0.25})
    model = Counter()
    best = context.train_selected(_ctx(), model, 1, 5)
    assert model.trained == [1, 2, 3, 4, 5] and seen == [1, 2, 3, 4, 5]
    assert best is not model and best.trained == [1, 2] and best.selected_round == 2  # the tie keeps round 2


def test_patience_stops_and_every_counts_from_the_first_round(curve) -> None:
    values, seen = curve
    values.update({2: 0.3, 4: 0.2, 6: 0.1, 8: 0.4})
    model = Counter()
    best = context.train_selected(_ctx(every=2, patience=2), model, 11, 19)
    assert seen == [2, 4, 6] and model.trained == list(range(11, 17))  # stopped after 2 stale validations
    assert best.selected_round == 12 and best.trained == [11, 12]


def test_a_start_that_validates_best_is_kept(curve) -> None:
    """finetune: the deleted copy is a model too; validation may say fine-tuning hurt."""
    values, _ = curve
    values.update({0: 0.5, 1: 0.4, 2: 0.45})
    model = Counter()
    best = context.train_selected(_ctx(), model, 21, 22, start_is_candidate=True)
    assert model.trained == [21, 22] and best.trained == [] and best.selected_round == 20


@pytest.mark.parametrize("setting", [{"monitor": None}, {"valid": 0}])
def test_without_selection_the_last_round_is_returned(curve, setting: dict) -> None:
    _, seen = curve
    model = Counter()
    assert context.train_selected(_ctx(**setting), model, 1, 4, True) is model
    assert seen == [] and model.trained == [1, 2, 3, 4] and model.selected_round == 4
