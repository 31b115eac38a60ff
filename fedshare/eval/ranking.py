"""Full-ranking math: mask history, one ``topk``, every metric for every K from one hit matrix.

Plain torch, no torchmetrics: a Flower node (a fresh process per message) evaluates with it;
`fedshare.eval.metrics.RankingMetrics` is the torchmetrics ``Metric`` on top of it.

A batch of ``B`` users is scored against all items (``scores: [B, n_items]``). The caller
masks each user's known items (train, plus valid at test time) with :func:`mask_history`, turns
the scores into a hit matrix with :func:`topk_hits`, and feeds the hits to
:class:`RankingMetrics`, which accumulates per-user values overall and per sharing group.
Metric keys are ``name@k`` (``recall@20``); the stage prefix (``test/``) belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedshare.data.interactions import gather_rows

METRIC_NAMES = ("recall", "ndcg", "hr")


def mask_history(scores: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Set ``scores[rows, cols] = -inf`` in place and return ``scores``.

    ``rows`` are positions within the batch (0..B-1), ``cols`` item ids. Indexing (rather than
    a dense ``[B, n_items]`` mask) keeps the cost proportional to the history size.
    """
    scores[rows, cols] = float("-inf")
    return scores


BLOCK = 128  # items per block of `block_topk` (a row's block maxima: n_items / 128 values)


def block_topk(scores: Tensor, k: int) -> Tensor:
    """The item ids of each row's ``k`` best scores, best first: ``torch.topk(scores, k).indices``.

    ``torch.topk`` over 100,000 items per row costs about as much as the score product itself
    on a CPU. In two stages it reads the row once: the row's maxima per block of `BLOCK` items
    (one vectorized ``amax``), the ``k`` blocks with the largest maxima, then one small ``topk``
    over those blocks' ``k * BLOCK`` scores. Exact: an item outside the ``k`` best blocks has at
    least ``k`` block maxima at or above it, so it is not among the ``k`` best (only which of
    several equal scores is taken may differ, as with ``torch.topk`` itself). Rows of fewer
    than ``4 * k`` blocks go to ``torch.topk`` directly.
    """
    n_batch, n_items = scores.shape
    k = min(k, n_items)
    n_blocks = n_items // BLOCK
    if n_blocks < 4 * k:
        return torch.topk(scores, k, dim=1, sorted=True).indices
    whole = n_blocks * BLOCK
    maxima = scores[:, :whole].unflatten(1, (n_blocks, BLOCK)).amax(dim=2)  # [B, n_blocks]
    best = torch.topk(maxima, k, dim=1, sorted=False).indices  # [B, k] block ids
    cand = (best.unsqueeze(2) * BLOCK + torch.arange(BLOCK, device=scores.device)).flatten(1)
    if whole < n_items:  # the last partial block is always a candidate
        tail = torch.arange(whole, n_items, device=scores.device).expand(n_batch, -1)
        cand = torch.cat([cand, tail], dim=1)
    top = torch.topk(scores.gather(1, cand), k, dim=1, sorted=True).indices
    return cand.gather(1, top)


def topk_hits(scores: Tensor, target_rows: Tensor, target_cols: Tensor, k: int) -> Tensor:
    """Bool ``[B, k]``: ``hit[b, r]`` is true when the item ranked ``r`` for user ``b`` is a target.

    One top-k (:func:`block_topk`); the targets (``target_rows`` = batch positions, ``target_cols``
    = item ids) become sorted keys ``row * n_items + col`` and each top-k entry is looked up with
    one ``searchsorted``. That is the same as gathering from a dense ``[B, n_items]`` target
    matrix, without allocating and zeroing it (25x faster on CPU at Gowalla size). When ``k``
    exceeds the number of items (tiny debug data), the missing ranks are padded with misses so
    that every K still indexes the same columns.
    """
    if k < 1:
        raise ValueError(f"topk_hits: k must be >= 1, got {k}")
    n_batch, n_items = scores.shape
    top = block_topk(scores, k)
    device = scores.device
    rows = target_rows.to(device=device, dtype=torch.long)
    cols = target_cols.to(device=device, dtype=torch.long)
    keys = rows * n_items + cols
    queries = torch.arange(n_batch, device=device).unsqueeze(1) * n_items + top
    if keys.numel() == 0:
        hits = torch.zeros_like(queries, dtype=torch.bool)
    else:
        keys = torch.sort(keys).values
        pos = torch.searchsorted(keys, queries).clamp_(max=keys.numel() - 1)
        hits = keys[pos] == queries
    if k > n_items:
        hits = torch.cat([hits, hits.new_zeros(n_batch, k - n_items)], dim=1)
    return hits


def rows_of(indptr: Tensor, items: Tensor, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR rows of ``users``: (batch position of each entry, item id, entries per user)."""
    new_indptr, cols = gather_rows(indptr, items, users)
    counts = new_indptr.diff()
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    return rows, cols, counts


def update_ranking(
    metric: Any,
    scores: Tensor,
    users: Tensor,
    history: Sequence[tuple[Tensor, Tensor]],
    target: tuple[Tensor, Tensor],
    groups: Tensor,
) -> None:
    """One evaluation batch: mask each user's known items (``history``: CSR ``(indptr, items)``
    pairs), rank, and add the users' hits on ``target`` to ``metric``. The one code path of
    every evaluation, in-process and on a deployment's nodes. ``metric``: a `RankingMetrics`
    or a `RankingSums`."""
    for indptr, items in history:
        rows, cols, _ = rows_of(indptr, items, users)
        mask_history(scores, rows, cols)
    rows, cols, n_target = rows_of(*target, users)
    hits = topk_hits(scores, rows, cols, min(metric.max_k, scores.shape[1]))
    metric.update(hits, n_target, groups)


def _discounts(k: int, device: torch.device) -> Tensor:
    """``1 / log2(r + 2)`` for ranks ``r = 0..k-1``."""
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float32) + 2.0)


def ranking_metrics(hits: Tensor, n_target: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user Recall@K, NDCG@K and HR@K for every K in ``ks``, as float ``[B]`` tensors.

    With ``h_r`` = hit at rank ``r`` (0-based) and ``n`` = ``n_target`` (the user's test items):

    - ``recall@K = sum_{r<K} h_r / n``
    - ``ndcg@K = DCG@K / IDCG@K``, ``DCG@K = sum_{r<K} h_r / log2(r + 2)``,
      ``IDCG@K = sum_{r < min(n, K)} 1 / log2(r + 2)``
    - ``hr@K = 1 if sum_{r<K} h_r > 0 else 0``

    All K come from cumulative sums over the one hit matrix. Users with ``n == 0`` get 0 for
    every metric (never NaN); :class:`RankingMetrics` leaves them out of the means.
    """
    n_batch, width = hits.shape
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > width:
        raise ValueError(f"ranking_metrics: ks={ks} must be in 1..{width} (the hit matrix width)")
    device = hits.device
    hits_f = hits.to(torch.float32)
    disc = _discounts(width, device)
    n_hits = hits_f.cumsum(dim=1)  # [B, width]: hits within the first r+1 ranks
    dcg = (hits_f * disc).cumsum(dim=1)
    ideal = disc.cumsum(dim=0)  # ideal[m-1] = IDCG with m relevant items in the top
    n_target = n_target.to(device=device, dtype=torch.long)
    has_target = n_target > 0
    n_safe = n_target.clamp(min=1).to(torch.float32)

    out: dict[str, Tensor] = {}
    for k in ks:
        hits_k = n_hits[:, k - 1]
        ideal_k = ideal[n_target.clamp(min=1, max=k) - 1]
        zero = torch.zeros_like(hits_k)
        out[f"recall@{k}"] = torch.where(has_target, hits_k / n_safe, zero)
        out[f"ndcg@{k}"] = torch.where(has_target, dcg[:, k - 1] / ideal_k, zero)
        out[f"hr@{k}"] = torch.where(has_target, (hits_k > 0).to(torch.float32), zero)
    return out


def add_group_sums(
    sums: Tensor,
    counts: Tensor,
    hits: Tensor,
    n_target: Tensor,
    groups: Tensor,
    ks: Sequence[int],
    keys: Sequence[str],
) -> None:
    """Adds a batch's per-user metrics into ``sums[g, m]`` and ``counts[g]`` (users without
    targets are skipped) in place: the state of `RankingMetrics` and `RankingSums`."""
    per_user = ranking_metrics(hits, n_target, ks)
    values = torch.stack([per_user[key] for key in keys], dim=1).to(sums)
    counted = (n_target > 0).to(sums.device)
    groups = groups.to(device=sums.device, dtype=torch.long)
    # Zero rows for skipped users instead of boolean indexing: no host sync, same sums.
    values = values * counted.unsqueeze(1).to(values.dtype)
    sums.index_add_(0, groups, values)
    counts.index_add_(0, groups, counted.to(torch.long))


def metric_keys(ks: Sequence[int]) -> list[str]:
    return [f"{name}@{k}" for k in sorted({int(k) for k in ks}) for name in METRIC_NAMES]


class RankingSums:
    """`RankingMetrics`' state (``sums[g, m]``, ``counts[g]``) without torchmetrics: a node's
    share of an evaluation, added up on the server with ``RankingMetrics.add_sums``."""

    def __init__(self, ks: Sequence[int], n_groups: int) -> None:
        self.ks = sorted({int(k) for k in ks})
        self.keys = metric_keys(self.ks)
        self.sums = torch.zeros(n_groups, len(self.keys), dtype=torch.float64)
        self.counts = torch.zeros(n_groups, dtype=torch.long)

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def update(self, hits: Tensor, n_target: Tensor, groups: Tensor) -> None:
        add_group_sums(self.sums, self.counts, hits, n_target, groups, self.ks, self.keys)
