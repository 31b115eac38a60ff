"""The in-process run: ``train(cfg)`` fits, tests, unlearns and reports (``python -m fedshare.train``).

A run writes into its folder: ``config.yaml`` (the resolved config, written once the data has loaded,
before training), ``metrics.json`` (flat ``{"test/recall@20": ...}``), ``checkpoints/last.ckpt``
and, with the W&B logger, the offline W&B run under ``wandb/``.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules import FederatedDataModule
from fedshare.config import save
from fedshare.reporting.tables import group_rows, report_run
from fedshare.reporting.unlearning_page import log_wandb
from fedshare.run.build import build_model
from fedshare.run.checkpoints import AtomicCheckpointIO, LastCheckpoint
from fedshare.run.faults import fault_callbacks
from fedshare.run.folder import resume_checkpoint, run_dir_for
from fedshare.run.logger import build_logger
from fedshare.run.runtime import tune_allocator
from fedshare.unlearning.phase import snapshot_dir, unlearn_phase
from fedshare.unlearning.requests import read_requests_csv
from fedshare.unlearning.snapshots import SnapshotStore, snapshot_rounds
from lightning_modules.history import FedEraserRecorder, FRURecorder
from lightning_modules.progress import RoundProgressBar
from lightning_modules.snapshots import SnapshotCallback

log = logging.getLogger("fedshare")


class RunInterrupted(RuntimeError):
    """Training was stopped before its last round (Ctrl-C)."""


def _plain(value: Any) -> Any:
    """A config value as plain Python (lists and dicts leave OmegaConf's containers)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig | DictConfig) else value


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")
    tmp.replace(path)


class HistoryFile(pl.Callback):
    """Rewrites ``history.json`` (every validation so far, with its round) after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.fast_dev_run and hasattr(pl_module, "history"):
            _write_json(self.path, {"val": pl_module.history["val"]})


def train(cfg: DictConfig, command: str | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs fit + test for ``cfg`` (and the unlearning phase when ``unlearn.methods`` is set);
    returns the flat metrics and the objects used. ``command``: the command line, saved in
    the run folder as ``command.txt``."""
    run_dir = run_dir_for(cfg)
    resume_from = resume_checkpoint(cfg, run_dir)
    tune_allocator()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # data first: a missing or malformed file stops the run before its folder exists
    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm)
    if cfg.unlearn.methods and cfg.unlearn.requests.file:  # a malformed request file stops the run now
        read_requests_csv(Path(cfg.unlearn.requests.file), dm.n_users, dm.n_items)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        save(cfg, run_dir / "config.yaml")
        if command:
            (run_dir / "command.txt").write_text(command + "\n")
    else:
        log.info("resuming %s from %s", run_dir, resume_from)
    logger = build_logger(cfg, run_dir)
    if logger is not None:
        import wandb

        logger.log_hyperparams({f"sharing/{k}": v for k, v in dm.summary().items()})
        logger.experiment.log({"sharing/ratio": wandb.Histogram(dm.share_ratio.tolist())})

    checkpoint = LastCheckpoint(run_dir / "checkpoints", int(cfg.checkpoint.every))
    methods = list(cfg.unlearn.methods or [])
    snapshots = []
    if "contrastive" in methods:  # the only history contrastive unlearning keeps
        snapshots.append(
            SnapshotCallback(
                SnapshotStore(snapshot_dir(run_dir)),
                snapshot_rounds(_plain(cfg.unlearn.snapshots), int(cfg.fed.rounds)),
            )
        )
    if "fedEraser" in methods:  # each baseline records the history it needs, in its own store
        snapshots.append(
            FedEraserRecorder(run_dir / "unlearn" / "fedEraser", every=int(cfg.unlearn.fedEraser.every))
        )
    if "fru" in methods:
        snapshots.append(FRURecorder(run_dir / "unlearn" / "fru", alpha=float(cfg.unlearn.fru.alpha)))
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    rounds = int(cfg.fed.rounds)
    every = max(1, int(cfg.eval.every))
    if (
        not dm.valid.items.size and dm.val_split == "valid"
    ) or every > rounds:  # nothing to validate, or never due
        tcfg["limit_val_batches"] = 0
    trainer = pl.Trainer(
        **tcfg,
        max_epochs=rounds,
        check_val_every_n_epoch=every,
        num_sanity_val_steps=0,
        logger=logger if logger is not None else False,
        callbacks=[
            checkpoint,
            *([RoundProgressBar()] if tcfg["enable_progress_bar"] else []),
            *fault_callbacks(),
            HistoryFile(run_dir / "history.json"),
            *snapshots,
        ],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        log_every_n_steps=1,
        enable_model_summary=False,
    )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
        except SystemExit as stop:  # lightning turns Ctrl-C into a graceful stop, then exits
            signal.signal(signal.SIGINT, sigint)  # it also left Ctrl-C ignored
            raise RunInterrupted(
                f"stopped by the user after {trainer.current_epoch} of {rounds} rounds; no test metrics "
                f"were written. The last checkpoint is in {run_dir / 'checkpoints'}"
            ) from stop
        trainer.test(model, datamodule=dm, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics = {k: metrics[k] for k in sorted(metrics) if not k.startswith("time/")}
        metrics["rounds_done"] = float(trainer.current_epoch)  # < fed.rounds after trainer.max_time
        if model.history["val"]:
            metrics.update({k: v for k, v in model.history["val"][-1].items() if k != "round"})
        _write_json(run_dir / "metrics.json", metrics)
        if methods and cfg.trainer.fast_dev_run:
            log.info("fast_dev_run: the unlearning phase is skipped (no snapshots were kept)")
        elif methods:
            metrics.update(unlearn_phase(cfg, model, dm, run_dir, lambda d: build_model(cfg, d), methods))
        if logger is not None:
            import wandb

            logger.experiment.summary.update(metrics)
            if methods:
                log_wandb(logger.experiment, metrics, int(cfg.unlearn.k))
            columns, rows = group_rows(metrics, dm.group_names)
            logger.experiment.log(
                {"test/by_share_group": wandb.Table(columns=["users", *columns], data=rows)}
            )
    finally:
        if logger is not None:
            import wandb

            wandb.finish()
    report_run(f"{cfg.choices.experiment or cfg.model.name} on {cfg.data.name}", metrics, cfg, run_dir, dm.group_names)
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm, "run_dir": run_dir}
