"""Full-ranking evaluation shared by every recommender module (DESIGN.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from fedshare.data.interactions import UserCSR
from fedshare.eval.metrics import RankingMetrics, update_ranking


def _csr_buffers(module: pl.LightningModule, name: str, csr: UserCSR) -> None:
    module.register_buffer(f"{name}_indptr", torch.from_numpy(csr.indptr), persistent=False)
    module.register_buffer(f"{name}_items", torch.from_numpy(csr.items), persistent=False)


class RankingModule(pl.LightningModule):
    """Scores all items for batches of users, masks history by index, one ``topk``.

    Validation masks the training items; test masks training and validation items. Metrics are
    reported overall and per sharing group (``test/recall@20/share=0``, ...). Subclasses
    implement ``score_users``.
    """

    def __init__(self, ks: Sequence[int]) -> None:  # eval.ks
        super().__init__()
        self.ks = [int(k) for k in ks]
        self.val_metrics: RankingMetrics | None = None
        self.test_metrics: RankingMetrics | None = None
        self.history: dict[str, list[dict[str, float]]] = {"val": []}
        self.val_split = "valid"

    def attach_data(self, dm) -> None:
        """Takes the evaluation splits and sharing groups from a set-up ``FederatedDataModule``."""
        _csr_buffers(self, "train", dm.train)
        _csr_buffers(self, "valid", dm.valid)
        _csr_buffers(self, "test", dm.test)
        self.register_buffer("share_group", torch.from_numpy(dm.share_group), persistent=False)
        self.group_names = list(dm.group_names)
        self.val_split = dm.val_split
        self.val_metrics = RankingMetrics(self.ks, self.group_names)
        self.test_metrics = RankingMetrics(self.ks, self.group_names)

    def score_users(self, users: Tensor) -> Tensor:
        raise NotImplementedError

    def _evaluate(self, users: Tensor, target: str, history: Sequence[str], metric: RankingMetrics) -> None:
        users = users.to(self.device)
        with torch.no_grad():
            scores = self.score_users(users).float()
        csr = {
            name: (getattr(self, f"{name}_indptr"), getattr(self, f"{name}_items"))
            for name in (*history, target)
        }
        update_ranking(metric, scores, users, [csr[n] for n in history], csr[target], self.share_group[users])

    def validation_step(self, users: Tensor, batch_idx: int) -> None:
        if self.val_split == "test":  # a learning curve on test, masked as the test stage masks
            self._evaluate(users, "test", ("train", "valid"), self.val_metrics)
        else:
            self._evaluate(users, "valid", ("train",), self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        prefix = "curve/test" if self.val_split == "test" else "val"
        values = {f"{prefix}/{k}": float(v) for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        self.log_dict(values, batch_size=1)
        self.history["val"].append({"round": self.current_epoch + 1, **values})

    def test_step(self, users: Tensor, batch_idx: int) -> None:
        self._evaluate(users, "test", ("train", "valid"), self.test_metrics)

    def on_test_epoch_end(self) -> None:
        values = {f"test/{k}": float(v) for k, v in self.test_metrics.compute().items()}
        self.test_metrics.reset()
        self.log_dict(values, batch_size=1)

    # the validation history feeds metrics.json: a resumed run must keep the earlier rounds'
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("history", {"val": []})

    def configure_optimizers(self):
        return None  # rounds update their tables by hand (clients and server have their own steps)
