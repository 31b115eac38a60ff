"""Entry point: ``python -m fedshare.train [GROUP=NAME ...] [key=value ...]``.

``train(cfg)`` is the function tests and sweeps call; ``main()`` only reads ``sys.argv``.
A run writes into its folder: ``config.yaml`` (the resolved config, written once the data has loaded, before training),
``metrics.json`` (flat ``{"test/recall@20": ...}``), ``checkpoints/last.ckpt`` and, with the
W&B logger, the offline W&B run under ``wandb/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules import FederatedDataModule
from fedshare.checkpoints import AtomicCheckpointIO, LastCheckpoint
from fedshare.config import GROUPS, OVERLAYS, ConfigError, available, compose, save
from fedshare.faults import fault_callbacks
from fedshare.readers import DatasetError
from fedshare.report import format_comparison, log_wandb, write_figures
from fedshare.requests import RequestError, read_requests_csv
from fedshare.runtime import tune_allocator
from fedshare.snapshots import SnapshotStore, snapshot_rounds
from fedshare.unlearn import snapshot_dir, unlearn_phase
from lightning_modules import FedMFModule, FedShareModule, LightGCNModule, PopularityModule
from lightning_modules.history import FedEraserRecorder, FRURecorder
from lightning_modules.progress import RoundProgressBar
from lightning_modules.snapshots import SnapshotCallback

log = logging.getLogger("fedshare")

# W&B folders the user chose before starting; the others are placed inside each run folder
_WANDB_DIRS = {"WANDB_CONFIG_DIR": "config", "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data"}
_USER_WANDB_ENV = {var: os.environ.get(var) for var in _WANDB_DIRS}


class RunFolderError(RuntimeError):
    """The run folder cannot be used (it holds another run)."""


class RunInterrupted(RuntimeError):
    """Training was stopped before its last round (Ctrl-C)."""


def run_dir_for(cfg: DictConfig) -> Path:
    if cfg.paths.output_dir:
        return Path(cfg.paths.output_dir).expanduser().absolute()
    name = cfg.choices.experiment or cfg.model.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.paths.runs_root).expanduser().absolute() / name / stamp
    path, n = base, 1
    while path.exists():  # two runs started in the same second get their own folders
        path, n = base.with_name(f"{stamp}-{n}"), n + 1
    return path


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from (``resume=true``), or None for a new run.

    A new run never reuses a folder that holds a run. A resumed run needs the folder of an
    unfinished run (config.yaml and checkpoints/last.ckpt, no metrics.json) and the same
    config, except ``resume`` itself: a changed setting would make the result a mix of two runs.
    """
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    if not cfg.resume:
        earlier = [p.name for p in (config, metrics) if p.exists()]
        if earlier:  # never overwrite the record of an earlier run
            raise RunFolderError(
                f"{run_dir} already holds a run ({', '.join(earlier)}); choose another paths.output_dir, "
                "leave it unset for a new timestamped folder under paths.runs_root, or pass resume=true "
                "to continue an unfinished run"
            )
        return None
    if not cfg.paths.output_dir:
        raise RunFolderError("resume=true needs paths.output_dir=FOLDER, the folder of the run to continue")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if metrics.exists():
        raise RunFolderError(f"{run_dir} holds a finished run (metrics.json); there is nothing to resume")
    if not config.exists() or not ckpt.exists():
        missing = [str(p) for p in (config, ckpt) if not p.exists()]
        raise RunFolderError(f"cannot resume {run_dir}: missing {', '.join(missing)}")
    saved = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    now = OmegaConf.to_container(cfg, resolve=True)
    saved.pop("resume", None), now.pop("resume", None)
    changed = sorted(_diff(saved, now))
    if changed:
        raise RunFolderError(
            f"cannot resume {run_dir}: the config differs from its config.yaml at {', '.join(changed[:10])}; "
            "resume with the run's own settings"
        )
    return ckpt


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# model.name -> module; every other key of the model group is a keyword of the module
MODULES = {"fedmf": FedMFModule, "fedshare": FedShareModule, "lightgcn": LightGCNModule}
FEDERATED = ("fedmf", "fedshare")


def new_model(cfg: DictConfig, n_users: int, n_items: int) -> pl.LightningModule:
    """The module of ``cfg.model``, initialised (the seed's draws), before any data is attached."""
    m = cfg.model
    ks = list(cfg.eval.ks)
    if m.name == "popularity":
        return PopularityModule(n_items, ks=ks)
    if m.name in MODULES:
        kwargs = {k: v for k, v in OmegaConf.to_container(m, resolve=True).items() if k != "name"}
        if m.name in FEDERATED:
            kwargs["cohort_fraction"] = cfg.fed.cohort_fraction
            kwargs["nodes"] = int(cfg.fed.nodes)
        return MODULES[m.name](n_users, n_items, seed=cfg.seed, ks=ks, **kwargs)
    # compose() validates model.name; this guards a new name added there but not here
    raise ConfigError(f"model.name={m.name!r} has no module; accepted: popularity, {', '.join(MODULES)}")


def build_model(cfg: DictConfig, dm: FederatedDataModule) -> pl.LightningModule:
    model = new_model(cfg, dm.n_users, dm.n_items)
    model.attach_data(dm)
    return model


def build_logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.name == "none" or cfg.trainer.fast_dev_run:
        return None
    from pytorch_lightning.loggers import WandbLogger

    # keep every W&B file inside the run folder, never in the home folder
    wandb_home = run_dir / "wandb"
    for var, sub in (
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
    ):
        os.environ.setdefault(var, str(wandb_home / sub))
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or (cfg.choices.experiment or cfg.model.name),
        name=run_dir.name,
        save_dir=str(run_dir),
        mode=cfg.logger.mode,
        tags=list(cfg.logger.tags),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


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


def group_rows(metrics: dict[str, float], groups: list[str] | None = None) -> tuple[list[str], list[list]]:
    """Test metrics as rows (all users, then each sharing group) x columns (metric@K)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith("test/"):
            continue
        name, _, group = key[len("test/") :].partition("/")
        rows.setdefault(group or "all users", {})[name] = value
    order = ["all users"] + [f"share={g}" for g in groups or []]
    names = sorted(rows, key=lambda r: order.index(r) if r in order else len(order))
    cols = sorted(
        {c for r in rows.values() for c in r}, key=lambda c: (c.split("@")[0], int(c.split("@")[1]))
    )
    return cols, [[name, *(rows[name].get(c, math.nan) for c in cols)] for name in names]


def format_table(metrics: dict[str, float], groups: list[str] | None = None) -> str:
    cols, rows = group_rows(metrics, groups)
    if not rows:
        return "(no test metrics)"
    width = max(len(r[0]) for r in rows) + 2
    lines = ["".ljust(width) + "".join(c.rjust(11) for c in cols)]
    for name, *values in rows:
        lines.append(name.ljust(width) + "".join(f"{v:11.4f}" for v in values))
    return "\n".join(lines)


def report_run(
    title: str, metrics: dict[str, float], cfg: DictConfig, run_dir: Path, groups: list[str] | None = None
) -> None:
    """The end of a run on the terminal: test metrics, the before/after unlearning table (and
    its figures in the run folder), the run folder."""
    print(f"\nTest metrics ({title}):")
    print(format_table(metrics, groups))
    if any(k.startswith("unlearn/") for k in metrics):
        print(
            f"\nBefore / after unlearning ({int(metrics['unlearn/revoked_pairs'])} revoked pairs of "
            f"{int(metrics['unlearn/revoking_users'])} users):"
        )
        print(format_comparison(metrics, int(cfg.unlearn.k)))
        write_figures(run_dir)
    print(f"Run folder: {run_dir}")


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


def usage() -> str:
    lines = [__doc__.strip(), "", "Config groups (GROUP=NAME):"]
    for group in (*GROUPS, *OVERLAYS):
        lines.append(f"  {group:11s} {', '.join(available(group))}")
    lines.append("Keys and their meaning: the comments in configs/config.yaml and configs/GROUP/NAME.yaml.")
    return "\n".join(lines)


def quiet_library_noise() -> None:
    """Silence warnings that are about library internals, not about the run."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    os.environ.setdefault("POSSIBLE_USER_WARNINGS", "off")  # lightning's tips


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_library_noise()
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        cfg = compose(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg, shlex.join(["python", "-m", "fedshare.train", *args]))
    except DatasetError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except RunFolderError as err:
        print(f"run folder error: {err}", file=sys.stderr)
        return 2
    except RequestError as err:
        print(f"request error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except MisconfigurationException as err:  # e.g. trainer.accelerator=gpu without a GPU
        print(f"trainer error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
