"""Interaction tables shared by readers, sharing policies, clients and evaluation.

Ids are internal (0..n-1) once a dataset is loaded; ``user_ids``/``item_ids`` map them back
to the ids of the source files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """One split as parallel arrays: ``users[k]`` interacted with ``items[k]`` at ``times[k]``."""

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    times: np.ndarray | None = None  # float64, or None when the source has no time order

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(f"users ({len(self.users)}) and items ({len(self.items)}) differ in length")
        if self.times is not None and len(self.times) != len(self.users):
            raise ValueError(f"times ({len(self.times)}) and users ({len(self.users)}) differ in length")

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class InteractionData:
    """A loaded dataset: implicit feedback, ids remapped, split into train/valid/test."""

    name: str
    n_users: int
    n_items: int
    train: Split
    valid: Split
    test: Split
    user_ids: np.ndarray  # raw id of each internal user id
    item_ids: np.ndarray  # raw id of each internal item id

    def summary(self) -> str:
        total = len(self.train) + len(self.valid) + len(self.test)
        density = total / max(1, self.n_users * self.n_items)
        return (
            f"{self.name}: {self.n_users:,} users x {self.n_items:,} items, {total:,} interactions "
            f"(train {len(self.train):,} / valid {len(self.valid):,} / test {len(self.test):,}), "
            f"density {density:.4%}"
        )


@dataclass(frozen=True)
class UserCSR:
    """Per-user rows: the items of user ``u`` are ``items[indptr[u]:indptr[u+1]]``.

    Rows are sorted by item id, so ``u * n_items + item`` is globally sorted, which makes
    membership tests a single ``searchsorted``.
    """

    indptr: np.ndarray  # int64, n_users + 1
    items: np.ndarray  # int64
    times: np.ndarray | None
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def users(self) -> np.ndarray:
        """User id of every entry (the row index expanded)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.degrees)

    def select(self, mask: np.ndarray) -> UserCSR:
        """The sub-table of entries where ``mask`` is true (row order kept)."""
        users = self.users[mask]
        indptr = np.zeros(self.n_users + 1, np.int64)
        np.cumsum(np.bincount(users, minlength=self.n_users), out=indptr[1:])
        times = None if self.times is None else self.times[mask]
        return UserCSR(indptr, self.items[mask], times, self.n_items)


def to_csr(split: Split, n_users: int, n_items: int) -> UserCSR:
    """Group a split by user, items sorted within each user; duplicates are kept."""
    # The order of np.lexsort((items, users)), as one stable sort of the key user * m + item
    # (m above every item id): several times faster, and linear on input already in that order.
    m = int(split.items.max(initial=-1)) + 1
    order = np.argsort(split.users.astype(np.int64, copy=False) * m + split.items, kind="stable")
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(split.users, minlength=n_users), out=indptr[1:])
    times = None if split.times is None else split.times[order]
    return UserCSR(indptr, split.items[order].astype(np.int64, copy=False), times, n_items)


def gather_rows(
    indptr: torch.Tensor, items: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR rows ``rows`` as (new indptr, concatenated entries), vectorized, on their device."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    new_indptr = torch.zeros(rows.numel() + 1, dtype=indptr.dtype, device=indptr.device)
    torch.cumsum(counts, 0, out=new_indptr[1:])
    total = int(new_indptr[-1])
    seg = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts, output_size=total)
    idx = torch.arange(total, device=rows.device) - new_indptr[seg] + starts[seg]
    return new_indptr, items[idx]
