"""One seeded generator per purpose (split, sharing, init, cohort, negatives, ...).

A purpose's stream depends only on the run seed and the purpose's name, so adding a new use of
randomness never shifts the draws of an existing one.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _purpose_id(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def numpy_generator(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _purpose_id(purpose)]))


def torch_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator (same draws on every machine; callers move results to their device)."""
    mixed = np.random.SeedSequence([int(seed), _purpose_id(purpose)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))
