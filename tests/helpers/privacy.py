"""Checks that the server holds no unshared interaction (DESIGN.md section 1).

A server-side store is a mapping name -> tensor/array. Integer tables of shape ``[n, 2]`` are
read as (user, item) pairs; any pair that is not a shared interaction is a leak.
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
        arr = _as_numpy(value)
        if arr is not None and arr.dtype.kind in "iu" and arr.ndim == 2 and arr.shape[1] == 2:
            out[name] = arr
    return out


def unshared_pairs(store: Mapping[str, Any], shared_edges: np.ndarray, n_items: int) -> dict[str, int]:
    """Per table, how many of its pairs are not shared interactions (empty dict: no leak)."""
    shared = shared_edges[:, 0].astype(np.int64) * n_items + shared_edges[:, 1].astype(np.int64)
    leaks = {}
    for name, table in pair_tables(store).items():
        keys = table[:, 0].astype(np.int64) * n_items + table[:, 1].astype(np.int64)
        bad = int((~np.isin(keys, shared)).sum())
        if bad:
            leaks[name] = bad
    return leaks
