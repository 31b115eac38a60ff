"""Offline, validation only (issue 14): on a finished FedShare run's best.ckpt, rank validation
users with a device-side user view z'_u = the mean of the item views z_i over the device's own
training items D_u (computed on the device from the item views every device receives):

  keep          the run's own scoring: p_u.q_i + beta * z_u.z_i for sharing users (server view z_u)
  local         p_u.q_i for everyone
  all b         p_u.q_i + b * z'_u.z_i for every user (sharing or not)
  nonsharing b  the run's own scoring for sharing users, p_u.q_i + b * z'_u.z_i for the others

Usage: python docs/runs/device-view-offline/devview.py RUN_DIR b1,b2,...  (one JSON line per
variant). No test metric is read: trainer.validate only."""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from datamodules.federated import FederatedDataModule
from fedshare.run.build import build_model


def main(run: Path, grid: list[float]) -> None:
    cfg = OmegaConf.load(run / "config.yaml")
    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm)
    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)  # the server graph: which users share
    model.eval()
    item_view, q, p = model.server.item_view, model.server.item_emb, model.clients.user_emb
    indptr, items = torch.as_tensor(dm.train.indptr), torch.as_tensor(dm.train.items)
    degree = indptr.diff()
    owner = torch.repeat_interleave(torch.arange(degree.numel()), degree)
    device_view = torch.zeros_like(p).index_add_(0, owner, item_view[items]) / degree.clamp_min(1).unsqueeze(1)
    sharing = torch.as_tensor(dm.shared.indptr).diff() > 0
    own = model.score_users

    def scorer(variant: str, b: float):
        def score(users: torch.Tensor) -> torch.Tensor:
            base = own(users) if variant in ("keep", "nonsharing") else p[users] @ q.T
            z = device_view[users]
            if variant == "nonsharing":
                z = z * (~sharing[users]).unsqueeze(1)
            return base + b * z @ item_view.T if b else base

        return score

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    for variant, bs in (("keep", [0.0]), ("local", [0.0]), ("all", grid), ("nonsharing", grid)):
        for b in bs:
            model.score_users = scorer(variant, b)
            out = trainer.validate(model, datamodule=dm, verbose=False)[0]
            row = {"variant": variant, "b": b} | {k: round(float(v), 4) for k, v in out.items() if "recall@20" in k}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(x) for x in sys.argv[2].split(",")])
