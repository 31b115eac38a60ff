"""Building a run's model from its config (and restoring a finished run's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules import FederatedDataModule
from fedshare.config import ConfigError, compose_saved
from fedshare.unlearning.phase import revoked_before
from fedshare.unlearning.requests import RequestLedger
from lightning_modules import FedMFModule, FedShareModule, LightGCNModule, PopularityModule

# model.name -> module; every other key of the model group is a keyword of the module
MODULES = {"fedmf": FedMFModule, "fedshare": FedShareModule, "lightgcn": LightGCNModule}
FEDERATED = ("fedmf", "fedshare")


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The keywords `new_model` passes to the module of ``cfg.model`` (after its sizes): every
    key of the model group but ``name``, ``ks`` (``eval.ks``), ``seed`` (not the popularity
    baseline's: it draws nothing), and ``cohort_fraction`` and ``nodes`` (``fed.*``) for the
    federated models. The modules have no defaults for any of them: the YAML is the only copy."""
    name = cfg.model.name
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    kwargs["ks"] = list(cfg.eval.ks)
    if name != "popularity":
        kwargs["seed"] = cfg.seed
    if name in FEDERATED:
        kwargs["cohort_fraction"] = cfg.fed.cohort_fraction
        kwargs["nodes"] = int(cfg.fed.nodes)
    return kwargs


def new_model(cfg: DictConfig, n_users: int, n_items: int) -> pl.LightningModule:
    """The module of ``cfg.model``, initialised (the seed's draws), before any data is attached."""
    name = cfg.model.name
    if name == "popularity":
        return PopularityModule(n_items, **model_kwargs(cfg))
    if name in MODULES:
        return MODULES[name](n_users, n_items, **model_kwargs(cfg))
    # compose() validates model.name; this guards a new name added there but not here
    raise ConfigError(f"model.name={name!r} has no module; accepted: popularity, {', '.join(MODULES)}")


def build_model(cfg: DictConfig, dm: FederatedDataModule) -> pl.LightningModule:
    model = new_model(cfg, dm.n_users, dm.n_items)
    model.attach_data(dm)
    return model


def load_run(run_dir: Path):
    """The run's config, data module and model, restored from the learned model's checkpoint:
    ``checkpoints/best.ckpt`` (the round selected on validation) where there is one, else
    ``checkpoints/last.ckpt``."""
    cfg = compose_saved(run_dir / "config.yaml")
    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm)
    ckpt_path = run_dir / "checkpoints" / "best.ckpt"
    if not ckpt_path.exists():
        ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path} is missing: unlearning starts from the learned checkpoint")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    # pairs taken back in earlier, finished sessions are local data on the devices now
    ledger = RequestLedger(run_dir / "unlearn" / "ledger.jsonl")
    du, di = revoked_before(run_dir, ledger, dm.n_users, dm.n_items)
    open_u, open_i = ledger.revoked_pairs()
    done = ~torch.isin(du * dm.n_items + di, open_u * dm.n_items + open_i)
    if done.any():
        dm = dm.revoked(du[done].numpy(), di[done].numpy())
        model.clients.unshare(du[done], di[done])
    model.server.refresh_views()
    return cfg, dm, model
