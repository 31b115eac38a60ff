"""The run's W&B logger (offline by default), every W&B file kept inside the run folder."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def build_logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.name == "none" or cfg.trainer.fast_dev_run:
        return None
    from pytorch_lightning.loggers import WandbLogger  # W&B only for a run that logs to it

    # keep every W&B file inside the run folder, never in the home folder
    wandb_home = run_dir / "wandb"
    for var, sub in (
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
    ):
        os.environ.setdefault(var, str(wandb_home / sub))
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or (cfg.choices.experiment or cfg.model.name),
        name=run_dir.name,
        save_dir=str(run_dir),
        mode=cfg.logger.mode,
        tags=list(cfg.logger.tags),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    # Lightning always calls wandb.init(anonymous=None); W&B warns about any value of that
    # deprecated setting ("The anonymous setting has no effect ..."). Left out, it is unset: the same.
    if "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None:
        del logger._wandb_init["anonymous"]
    return logger
