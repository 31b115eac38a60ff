"""Model selection on validation (eval.monitor, eval.patience): the test stage and the unlearning
phase use the best validated round's model, written to checkpoints/best.ckpt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from fedshare.config import compose
from fedshare.eval.selection import Selection
from fedshare.run.build import load_run
from fedshare.run.inprocess import train

# FedShare's defaults on the tiny data peak early: validation Recall@20 is highest at round 3 of 8
PEAKS_EARLY = ["logger=none", "experiment=fedshare", "fed.rounds=8", "eval.every=1"]


def _history(run_dir: Path) -> list[dict[str, float]]:
    return json.loads((run_dir / "history.json").read_text())["val"]


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[str, ...]):
    run_dir = tmp_path_factory.mktemp("selected")
    metrics, objs = train(compose([*tiny, *PEAKS_EARLY, f"paths.output_dir={run_dir}"]))
    return run_dir, metrics, objs


def test_the_test_stage_scores_the_best_validated_round(selected, tiny, tmp_path: Path) -> None:
    run_dir, metrics, _ = selected
    history = _history(run_dir)
    values = [h["val/recall@20"] for h in history]
    best = history[values.index(max(values))]
    assert metrics["best_round"] == best["round"] < metrics["rounds_done"] == 8  # the curve peaks early
    assert metrics["val/recall@20"] == max(values)  # the selected round's validation, not the last
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    # the test metrics are those of the best round's model: best.ckpt, tested afresh
    cfg, dm, model = load_run(run_dir)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, datamodule=dm, verbose=False)
    for key in ("test/recall@20", "test/ndcg@20", "test/recall@20/share=1"):
        assert trainer.callback_metrics[key].item() == pytest.approx(metrics[key], abs=1e-6), key

    # and not the last round's: the same run without selection tests round 8
    last, _ = train(compose([*tiny, *PEAKS_EARLY, "eval.monitor=null", f"paths.output_dir={tmp_path}"]))
    assert last["best_round"] == 8 and _history(tmp_path) == history
    assert last["test/recall@20"] != metrics["test/recall@20"]
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


def test_patience_stops_early_at_the_same_selected_model(selected, tiny, tmp_path: Path) -> None:
    run_dir, whole, _ = selected
    best = int(whole["best_round"])
    metrics, objs = train(compose([*tiny, *PEAKS_EARLY, "eval.patience=2", f"paths.output_dir={tmp_path}"]))
    assert metrics["rounds_done"] == best + 2 == objs["trainer"].current_epoch  # two validations without a new best
    assert metrics["best_round"] == best
    assert _history(tmp_path) == _history(run_dir)[: best + 2]
    for key, value in whole.items():
        if key.startswith(("test/", "val/")):
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # the early stop's round is on disk: a resumed run is told it is finished
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] + 1 == best + 2


def test_unlearning_starts_from_the_selected_model_and_scrubs_it(tiny, tmp_path: Path) -> None:
    metrics, objs = train(
        compose([*tiny, *PEAKS_EARLY, "unlearn.methods=[delete_only]", f"paths.output_dir={tmp_path}"])
    )
    assert metrics["best_round"] < 8
    # the learned model the phase judges is the tested one
    assert metrics["learn/test/recall@20"] == pytest.approx(metrics["test/recall@20"], abs=1e-6)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["unlearned"]  # revoked pairs leave the selected model's file too
    revoked = {
        tuple(map(int, line.split(",")))
        for line in (tmp_path / "unlearn" / "devices" / "revoked.csv").read_text().splitlines()[1:]
    }
    assert revoked and not revoked & {tuple(e) for e in best["server_graph"]["edges"].tolist()}


def test_selection_rule() -> None:
    s = Selection("val/recall@20", patience=2)
    assert s.update({"round": 1, "val/recall@20": 0.1})
    assert not s.update({"round": 2, "val/recall@20": 0.1})  # a tie keeps the earlier round
    assert s.best_round == 1 and not s.should_stop
    assert not s.update({"round": 3, "val/recall@20": math.nan})  # NaN never wins
    assert s.should_stop and s.metrics(3) == {"best_round": 1.0}
    again = Selection("val/recall@20", patience=2)
    again.load_state_dict(s.state_dict())
    assert again.state_dict() == s.state_dict() and again.should_stop
    with pytest.raises(KeyError, match="val/ndcg@20"):
        Selection("val/recall@5", None).update({"round": 1, "val/ndcg@20": 0.3})
    off = Selection(None, 2)
    assert not off.update({"round": 1, "val/recall@20": 0.5}) and not off.should_stop
    assert off.metrics(7) == {"best_round": 7.0}


def test_a_learning_curve_on_test_is_never_selected_on(tiny) -> None:
    cfg = compose([*tiny, *PEAKS_EARLY])
    assert not Selection.for_run(cfg, True, "test").active  # eval.curve: the test split's curve
    assert not Selection.for_run(cfg, False, "valid").active  # no validation due
    assert Selection.for_run(cfg, True, "valid").active
