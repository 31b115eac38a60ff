"""Checks that the server holds no unshared interaction (DESIGN.md section 1).

A server-side store is a mapping name -> tensor/array. Integer tables of shape ``[n, 2]`` are
read as (user, item) pairs, and integer edge lists as ``(src, dst)`` pairs of tensors; any pair
that is not a shared interaction is a leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def _as_numpy(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    return None


def pair_tables(store: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The integer ``[n, 2]`` tables of a store (where interactions could hide)."""
    out = {}
    for name, value in store.items():
        if isinstance(value, Mapping):
            out.update({f"{name}.{k}": v for k, v in pair_tables(value).items()})
            continue
        if isinstance(value, tuple) and len(value) == 2:
            a, b = _as_numpy(value[0]), _as_numpy(value[1])
            if a is not None and b is not None and a.shape == b.shape and a.dtype.kind in "iu":
                out[name] = np.stack([a.ravel(), b.ravel()], axis=1)
            continue
        arr = _as_numpy(value)
        if arr is not None and arr.dtype.kind in "iu" and arr.ndim == 2 and arr.shape[1] == 2:
            out[name] = arr
    return out


def unshared_pairs(store: Mapping[str, Any], shared_edges: np.ndarray, n_items: int) -> dict[str, int]:
    """Per table, how many of its pairs are not shared interactions (empty dict: no leak)."""
    shared = set((shared_edges[:, 0].astype(np.int64) * n_items + shared_edges[:, 1]).tolist())
    leaks = {}
    for name, table in pair_tables(store).items():
        keys = table[:, 0].astype(np.int64) * n_items + table[:, 1].astype(np.int64)
        bad = sum(1 for k in keys.tolist() if k not in shared)
        if bad:
            leaks[name] = bad
    return leaks
