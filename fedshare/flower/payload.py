"""What crosses the wire between the ServerApp and the nodes, as Flower records.

Tensors travel as ``ArrayRecord``s (numpy arrays, exact bytes), scalars as ``ConfigRecord``s.
An `Upload` travels sparse: only the item rows the node's clients touched (rows nobody touched
have zero sums, so the dense sum on the server is the same bit for bit).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

from fedshare.federated.fedshare import ViewMessage
from fedshare.federated.rounds import Upload


def to_record(**tensors: Tensor | np.ndarray) -> ArrayRecord:
    out = {}
    for name, value in tensors.items():
        array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        out[name] = Array.from_numpy_ndarray(np.ascontiguousarray(array))
    return ArrayRecord(out)


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in record.items()}


def upload_record(upload: Upload) -> ArrayRecord:
    rows = torch.nonzero(upload.weight_sum > 0).squeeze(1)
    return to_record(
        rows=rows,
        delta=upload.delta_sum.index_select(0, rows),
        weight=upload.weight_sum.index_select(0, rows),
    )


def upload_from(record: ArrayRecord, n_items: int, dim: int) -> Upload:
    t = from_record(record)
    rows = t["rows"].long()
    delta = torch.zeros((n_items, dim), dtype=t["delta"].dtype).index_copy_(0, rows, t["delta"])
    weight = torch.zeros(n_items, dtype=t["weight"].dtype).index_copy_(0, rows, t["weight"])
    return Upload(delta, weight)


def views_record(views: ViewMessage) -> ArrayRecord:
    return to_record(
        view_users=views.users,
        user_views=views.user_views,
        pool=views.pool,
        item_views=views.item_views,
    )


def views_from(t: dict[str, Tensor]) -> ViewMessage | None:
    if "view_users" not in t:
        return None
    return ViewMessage(t["view_users"], t["user_views"], t["pool"], t["item_views"])


def slice_views(views: ViewMessage | None, keep: Tensor, pool: bool = True) -> ViewMessage | None:
    """The part of ``views`` a node needs: the views of its own sharing users (``keep``, a mask
    over ``views.users``), the round's pool of negatives, the item views."""
    if views is None:
        return None
    return ViewMessage(
        views.users[keep],
        views.user_views[keep],
        views.pool if pool else views.pool[:0],
        views.item_views,
    )
