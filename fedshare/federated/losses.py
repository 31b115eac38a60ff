"""Losses as small pure functions, the formula in the docstring."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_grads(
    p: Tensor, q_pos: Tensor, q_neg: Tensor, weight: Tensor, reg: float, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the weighted BPR loss with L2, written out so a round needs no autograd graph.

    ``loss = sum_k w_k * (-log sigmoid(x_k) + reg/2 * (|p_k|^2 + |q+_k|^2 + |q-_k|^2))``
    with ``x_k = p_k . (q+_k - q-_k)``. ``weight`` is ``1/batch`` of the example's client, so the
    sum over a cohort is the sum of every client's mean batch loss, and the gradient of one
    client's rows is exactly that of its own mean loss.

    Returns ``scale * (dL/dp, dL/dq+, dL/dq-)`` and the loss per example; ``scale=-lr`` gives
    the SGD updates. ``q_pos`` and ``q_neg`` are overwritten with their results (callers pass
    gathered copies): a round calls this thousands of times on large batches, and fresh
    buffers cost more than the arithmetic.
    """
    diff = q_pos - q_neg
    x = torch.linalg.vecdot(p, diff)
    g = torch.sigmoid(-x).mul_(weight * -scale).unsqueeze(-1)  # d(-log sigmoid(x))/dx = -sigmoid(-x)
    loss = -F.logsigmoid(x) * weight
    if reg:
        wr = (weight * (reg * scale)).unsqueeze(-1)
        grad_p = diff.mul_(g).addcmul_(p, wr)
        grad_pos = q_pos.mul_(wr).addcmul_(p, g)
        grad_neg = q_neg.mul_(wr).addcmul_(p, g, value=-1.0)
    else:
        grad_p = diff.mul_(g)
        grad_pos = torch.mul(p, g, out=q_pos)
        grad_neg = torch.mul(p, g, out=q_neg).neg_()
    return grad_p, grad_pos, grad_neg, loss


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor, tau: float) -> Tensor:
    """``-log( e^{s+/tau} / (e^{s+/tau} + sum_j e^{s_j/tau}) )`` per anchor, cosine similarities.

    ``anchor``, ``positive``: ``[n, d]`` (row k's positive is ``positive[k]``); ``negatives``:
    ``[m, d]``, a pool shared by every anchor (the server's centroids). Returns the loss per
    anchor ``[n]``.
    """
    a = F.normalize(anchor, dim=-1)
    pos = torch.linalg.vecdot(a, F.normalize(positive, dim=-1)) / tau
    neg = a @ F.normalize(negatives, dim=-1).T / tau
    return torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1) - pos


def info_nce_in_batch(anchor: Tensor, positive: Tensor, tau: float) -> Tensor:
    """InfoNCE with in-batch negatives: row k's positive is ``positive[k]``, the other rows of
    ``positive`` are its negatives (as in SGL/SimGCL). Returns the loss per row ``[n]``."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = a @ p.T / tau
    return torch.logsumexp(logits, dim=1) - logits.diagonal()
