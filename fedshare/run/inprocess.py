"""The in-process run: ``train(cfg)`` fits, tests, unlearns and reports (``python -m fedshare.train``).

A run writes into its folder: ``config.yaml`` (the resolved config, written once the data has loaded,
before training), ``metrics.json`` (flat ``{"test/recall@20": ...}``), ``checkpoints/last.ckpt``
and, with the W&B logger, the offline W&B run under ``wandb/``.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from datamodules import FederatedDataModule
from fedshare.eval.selection import Selection
from fedshare.run import driver
from fedshare.run.build import build_model
from fedshare.run.checkpoints import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint
from fedshare.run.faults import fault_callbacks
from fedshare.run.folder import resume_checkpoint, run_dir_for
from fedshare.run.logger import build_logger
from fedshare.run.runtime import tune_allocator
from fedshare.unlearning.requests import read_requests_csv
from lightning_modules.progress import RoundProgressBar
from lightning_modules.recording import RecorderCallback

log = logging.getLogger("fedshare")


class RunInterrupted(RuntimeError):
    """Training was stopped before its last round (Ctrl-C)."""


class HistoryFile(pl.Callback):
    """Rewrites ``history.json`` (every validation so far, with its round) after each one."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.fast_dev_run and hasattr(pl_module, "history"):
            driver.write_history(self.run_dir, pl_module.history["val"])


def train(
    cfg: DictConfig, command: str | None = None, callbacks: list[pl.Callback] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs fit + test for ``cfg`` (and the unlearning phase when ``unlearn.methods`` is set);
    returns the flat metrics and the objects used. ``command``: the command line, saved in
    the run folder as ``command.txt``; ``callbacks``: more Lightning callbacks (a search's
    pruner, `fedshare.tuning.search`), after the run's own."""
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
        driver.write_config(cfg, run_dir, command)
    else:
        log.info("resuming %s from %s", run_dir, resume_from)
    logger = build_logger(cfg, run_dir)
    if logger is not None:
        import wandb  # W&B only for a run that logs to it

        logger.log_hyperparams({f"sharing/{k}": v for k, v in dm.summary().items()})
        logger.experiment.log({"sharing/ratio": wandb.Histogram(dm.share_ratio.tolist())})

    checkpoint = LastCheckpoint(run_dir / "checkpoints", int(cfg.checkpoint.every))
    methods = driver.methods(cfg)
    recorders = driver.recorders(cfg, run_dir)
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    rounds = int(cfg.fed.rounds)
    every = max(1, int(cfg.eval.every))
    validates = driver.validates(cfg, bool(dm.valid.items.size), dm.val_split)
    if not validates:  # nothing to validate, or never due
        tcfg["limit_val_batches"] = 0
    best = BestCheckpoint(run_dir / "checkpoints", Selection.for_run(cfg, validates, dm.val_split))
    trainer = pl.Trainer(
        **tcfg,
        max_epochs=rounds,
        check_val_every_n_epoch=every,
        num_sanity_val_steps=0,
        logger=logger if logger is not None else False,
        callbacks=[
            best,  # before last.ckpt's writer: a round's checkpoint holds its selection
            checkpoint,
            *([RoundProgressBar()] if tcfg["enable_progress_bar"] else []),
            *fault_callbacks(),
            HistoryFile(run_dir),
            *([RecorderCallback(recorders)] if recorders else []),
            *(callbacks or []),
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
        history, done = list(model.history["val"]), trainer.current_epoch
        selected = driver.selected_checkpoint(best.selection, best.path, done)
        trainer.test(model, datamodule=dm, verbose=False, ckpt_path=selected)  # the selected round's model
        model.history = {"val": history}  # the best checkpoint's own history stops at its round
        test = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("time/")}
        metrics = driver.run_metrics(test, done, history, best.selection.metrics(done))
        driver.write_metrics(run_dir, metrics)
        if methods and cfg.trainer.fast_dev_run:
            log.info("fast_dev_run: the unlearning phase is skipped (no snapshots were kept)")
        else:
            metrics.update(driver.unlearn(cfg, model, dm, run_dir, lambda d: build_model(cfg, d)))
        if logger is not None:
            driver.log_results(logger.experiment, cfg, metrics, dm.group_names)
    finally:
        if logger is not None:
            import wandb  # as above

            wandb.finish()
    driver.report(cfg, metrics, run_dir, dm.group_names)
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm, "run_dir": run_dir}
