"""The one run driver: what every run does around its rounds, in-process or on Flower.

Who turns the rounds differs: Lightning's fit loop in-process (`fedshare.run.inprocess`), the
ServerApp's loop on Flower (`fedshare.flower.apps`), as a Flower strategy's ``start()`` owns
its loop and calls the strategy's hooks. Everything around the rounds is here, and both call
it, so both write the same run folder in the same shapes:

- `write_config`: ``config.yaml`` and ``command.txt``, before the first round;
- `validates` / `history_prefix`: whether validation is due every ``eval.every`` rounds and
  under which keys (``val/...``, or ``curve/test/...`` for a test-only learning curve);
- `write_history`: ``history.json``, every validation so far;
- `recorders`: what the configured unlearning methods record while learning (the registry's
  recorders; in-process they run inside one Lightning callback, on Flower the loop calls them);
- `run_metrics` / `write_metrics`: the shape of ``metrics.json`` and its one writer;
- `unlearn`: the unlearning phase after learning, with the run's methods;
- `log_results`: the finished run's numbers into its W&B run;
- `report`: the end-of-run printout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedshare.atomic import write_json, write_text
from fedshare.config import to_yaml
from fedshare.eval.selection import Selection
from fedshare.reporting.tables import group_rows, report_run
from fedshare.reporting.unlearning_page import log_wandb
from fedshare.unlearning.context import Recorder
from fedshare.unlearning.phase import unlearn_phase
from fedshare.unlearning.registry import recorders as method_recorders

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"


def write_config(cfg: DictConfig, run_dir: Path, command: str | None) -> None:
    """The resolved config and the command line that started the run."""
    write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    if command:
        write_text(run_dir / COMMAND_FILE, command + "\n")


def methods(cfg: DictConfig) -> list[str]:
    """The unlearning methods the run's phase runs after learning ([] = learning only)."""
    return list(cfg.unlearn.methods or [])


def validates(cfg: DictConfig, has_valid: bool, val_split: str) -> bool:
    """Validation is due every ``eval.every`` rounds when there is something to validate on (a
    validation split, or the test split as a learning curve) and ``eval.every <= fed.rounds``."""
    every = max(1, int(cfg.eval.every))
    return (has_valid or val_split == "test") and every <= int(cfg.fed.rounds)


def history_prefix(val_split: str) -> str:
    """The key prefix of a validation: ``curve/test`` on a test-only learning curve, else ``val``."""
    return "curve/test" if val_split == "test" else "val"


def write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    """``history.json``: every validation so far, each with its round."""
    write_json(run_dir / HISTORY_FILE, {"val": history})


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """Every validation ``history.json`` holds ([] before the first)."""
    path = run_dir / HISTORY_FILE
    return json.loads(path.read_text())["val"] if path.exists() else []


def recorders(cfg: DictConfig, run_dir: Path) -> list[Recorder]:
    """What the run's unlearning methods record while it learns, each into its own store."""
    return method_recorders(cfg, run_dir, methods(cfg))


def run_metrics(
    test: Mapping[str, float],
    rounds_done: int,
    history: list[dict[str, float]],
    extra: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """What ``metrics.json`` holds after learning: the test metrics, ``rounds_done`` (fewer than
    ``fed.rounds`` after early stopping or ``trainer.max_time``), ``extra`` (``best_round``: the
    round of the tested model) and the validation of that round (the last one without
    ``best_round``)."""
    metrics = {k: float(v) for k, v in test.items()}
    metrics["rounds_done"] = float(rounds_done)
    extra = dict(extra or {})
    if history:
        best = extra.get("best_round")
        chosen = [h for h in history if best is not None and int(h["round"]) == int(best)]
        metrics.update({k: float(v) for k, v in (chosen or history)[-1].items() if k != "round"})
    metrics.update(extra)
    return {k: metrics[k] for k in sorted(metrics)}


def selected_checkpoint(selection: Selection, best: Path, rounds_done: int) -> str | None:
    """The checkpoint the test stage loads: ``best`` when the selection picked a round before
    the last one trained; None (the model as it is) otherwise."""
    if selection.best_round is None or selection.best_round == rounds_done:
        return None
    if not best.exists():
        raise FileNotFoundError(f"{best} is missing: round {selection.best_round} was selected on validation")
    return str(best)


def read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_metrics(run_dir: Path, metrics: Mapping[str, float]) -> None:
    """The one writer of ``metrics.json`` (flat, keys sorted)."""
    write_json(run_dir / METRICS_FILE, dict(metrics))


def merge_unlearning(run_dir: Path, new: Mapping[str, float]) -> None:
    """Puts an unlearning session's ``learn/`` and ``unlearn/`` keys into metrics.json.

    A later session (more requests on a finished run) replaces the earlier session's keys as a
    whole, so one file never mixes methods judged on different requests; the earlier keys move
    to ``unlearn/sessions/<n>.json``."""
    old = read_metrics(run_dir)
    prior = {k: v for k, v in old.items() if k.startswith(("learn/", "unlearn/"))}
    if prior:
        sessions = run_dir / "unlearn" / "sessions"
        write_json(sessions / f"{len(list(sessions.glob('*.json'))) + 1}.json", prior)
    merged = {k: v for k, v in old.items() if k not in prior}
    merged.update(new)
    write_metrics(run_dir, merged)


def unlearn(
    cfg: DictConfig,
    module: Any,
    data: Any,
    run_dir: Path,
    build: Callable[[Any], Any] | None,
    names: list[str] | None = None,
    **hooks: Any,
) -> dict[str, float]:
    """The unlearning phase (`unlearn_phase`) with ``names`` (default: the run's methods; none:
    {}), its metrics merged into metrics.json. ``hooks``: ``requests_file``, and on Flower the
    ``judge_fn`` and ``on_deleted`` that reach the devices."""
    names = methods(cfg) if names is None else list(names)
    if not names:
        return {}
    metrics = unlearn_phase(cfg, module, data, run_dir, build, names, **hooks)
    if metrics:
        merge_unlearning(run_dir, metrics)
    return metrics


def log_results(run: Any, cfg: DictConfig, metrics: Mapping[str, float], groups: list[str] | None = None) -> None:
    """The finished run's numbers into its W&B run: the summary, the unlearning table and charts
    (when methods unlearned), the test metrics by sharing group (when the groups are known)."""
    import wandb  # W&B only for a run that logs to it

    run.summary.update(dict(metrics))
    if any(k.startswith("unlearn/") for k in metrics):
        log_wandb(run, metrics, int(cfg.unlearn.k))
    if groups:
        columns, rows = group_rows(dict(metrics), groups)
        run.log({"test/by_share_group": wandb.Table(columns=["users", *columns], data=rows)})


def report(
    cfg: DictConfig,
    metrics: Mapping[str, float],
    run_dir: Path,
    groups: list[str] | None = None,
    title: str | None = None,
) -> None:
    """The end of a run on the terminal (test metrics by sharing group, the unlearning table)."""
    title = title or f"{cfg.choices.experiment or cfg.model.name} on {cfg.data.name}"
    report_run(title, dict(metrics), cfg, run_dir, groups)
