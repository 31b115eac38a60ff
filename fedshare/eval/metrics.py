"""Ranking metrics as a torchmetrics ``Metric`` (state and syncing), on the math of
`fedshare.eval.ranking`: mask history, one ``topk``, every metric for every K from one hit matrix.

A batch of ``B`` users is scored against all items (``scores: [B, n_items]``). The caller
masks each user's known items (train, plus valid at test time) with :func:`mask_history`, turns
the scores into a hit matrix with :func:`topk_hits`, and feeds the hits to
:class:`RankingMetrics`, which accumulates per-user values overall and per sharing group.
Metric keys are ``name@k`` (``recall@20``); the stage prefix (``test/``) belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from fedshare.eval.ranking import (  # noqa: F401  (re-exported: the metrics' public names)
    METRIC_NAMES,
    add_group_sums,
    mask_history,
    metric_keys,
    ranking_metrics,
    rows_of,
    topk_hits,
    update_ranking,
)


class RankingMetrics(Metric):
    """Mean Recall/NDCG/HR@K over users, overall and per sharing group.

    State: ``sums[g, m]`` (sum of metric ``m`` over the counted users of group ``g``) and
    ``counts[g]``, both summed across processes, so the means are exact under DDP. Users with
    no target are skipped. Without ``group_names`` there is a single implicit group.

    ``compute()`` returns ``recall@20`` etc. (mean over all counted users) and, when
    ``group_names`` is given, ``recall@20/share=<name>`` for every group that has users.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    sums: Tensor
    counts: Tensor

    def __init__(self, ks: Sequence[int] = (10, 20), group_names: list[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"RankingMetrics: ks must be positive integers, got {list(ks)}")
        self.group_names = None if group_names is None else [str(g) for g in group_names]
        self.metric_keys = metric_keys(self.ks)
        n_groups = 1 if self.group_names is None else len(self.group_names)
        if n_groups < 1:
            raise ValueError("RankingMetrics: group_names is empty; pass None for no groups")
        # float64 sums: a full evaluation adds ~1e5 per-user values; float32 would drift in the
        # 6th digit and make runs with different batch sizes disagree.
        self.add_state(
            "sums",
            default=torch.zeros(n_groups, len(self.metric_keys), dtype=torch.float64),
            dist_reduce_fx="sum",
        )
        self.add_state("counts", default=torch.zeros(n_groups, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def update(self, hits: Tensor, n_target: Tensor, groups: Tensor | None = None) -> None:
        """Add a batch: ``hits`` bool ``[B, >= max K]``, ``n_target`` ``[B]``, ``groups`` long ``[B]``."""
        if self.group_names is None:
            if groups is not None:
                raise ValueError("RankingMetrics.update: groups given but group_names was None at init")
            groups = torch.zeros(hits.shape[0], dtype=torch.long, device=self.sums.device)
        elif groups is None:
            raise ValueError(
                f"RankingMetrics.update: groups (indices into {self.group_names}) is required "
                "when group_names is set"
            )
        add_group_sums(self.sums, self.counts, hits, n_target, groups, self.ks, self.metric_keys)

    def add_sums(self, sums: Tensor, counts: Tensor) -> None:
        """Adds the state of another evaluator (a node of a deployment): the sum reduction
        that DDP applies across processes."""
        self.sums += sums.to(self.sums)
        self.counts += counts.to(self.counts)
        self._update_count += 1

    def compute(self) -> dict[str, Tensor]:
        total = self.counts.sum()
        overall = self.sums.sum(dim=0) / total  # NaN when nothing was counted: nothing to average
        out = {key: overall[m].to(torch.float32) for m, key in enumerate(self.metric_keys)}
        if self.group_names is not None:
            means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
            for g, name in enumerate(self.group_names):
                if int(self.counts[g]) == 0:
                    continue
                for m, key in enumerate(self.metric_keys):
                    out[f"{key}/share={name}"] = means[g, m].to(torch.float32)
        return out
