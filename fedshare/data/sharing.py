"""Personalized data sharing: every user picks a ratio ``r_u`` and shares ``S_u ⊆ D_u``.

``|S_u| = round(r_u · |D_u|)`` (round half up), chosen at random (seeded) or most recent first;
``L_u = D_u \\ S_u`` never leaves the device. Only training interactions are ever shared.

The config is the ``sharing`` group (``cfg.sharing``, a DictConfig or a plain dict), as
``configs/sharing/<policy>.yaml`` holds it: every key the policy reads must be there (the
defaults live in those files only; a missing key raises ``ValueError`` naming it):

- ``policy`` (str) ``fixed`` | ``uniform`` | ``beta`` | ``segments``
- ``ratio`` (float in [0, 1]) ``fixed``: every user's ratio
- ``low``, ``high`` (float in [0, 1]) ``uniform``: ratios ~ U[low, high)
- ``a``, ``b`` (float > 0) ``beta``: ratios ~ Beta(a, b)
- ``none``, ``full`` (float in [0, 1], sum <= 1) ``segments``: share of users sharing nothing /
  everything; the others are partial with a ratio in the open interval
  (``partial_low``, ``partial_high``) (floats in [0, 1])
- ``selection`` (str) ``random`` | ``recent``: which interactions are shared
- ``late_fraction`` (float in [0, 1]) share of the sharing users who start sharing later;
  ``late_rounds`` ([first, last], 1-based): the round they start at is drawn uniformly in that
  range. Everyone else shares from round 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedshare.data.datasets import load_dataset
from fedshare.data.interactions import InteractionData, UserCSR, to_csr
from fedshare.seeding import numpy_generator

POLICIES = ("fixed", "uniform", "beta", "segments")
SELECTIONS = ("random", "recent")
# Sources whose interactions carry a time order (named in the error for recent selection).
TIMED_DATASETS = (
    "synthetic (generated times)",
    "ml-100k and ratings.dat (unix times)",
    "amazon-beauty (per-user sequence order)",
    "csv with a time column",
)
GROUP_NAMES = ["0", "(0,0.5]", "(0.5,1)", "1"]

NEVER = -1  # start round of a user who shares nothing


def _get(cfg: Mapping[str, Any], key: str, policy: str | None = None) -> Any:
    value = cfg.get(key)  # None: absent (or null), reported below
    if value is None and "sharing" in cfg:
        raise ValueError(
            f"sharing.{key} is missing: pass the sharing group (cfg.sharing), not the whole config"
        )
    if value is None:
        needed = f" (needed by sharing.policy={policy})" if policy else ""
        raise ValueError(f"sharing.{key} is missing{needed}")
    return value


def _number(
    cfg: Mapping[str, Any],
    key: str,
    policy: str,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    lo_open: bool = False,
) -> float:
    """Read ``sharing.<key>`` as a float and check it lies in the accepted range."""
    value = _get(cfg, key, policy)
    accepted = f"a number {'>' if lo_open else '>='} {lo}" if hi is None else f"a number in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"sharing.{key}={value!r} is not a number; accepted: {accepted}")
    value = float(value)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if not np.isfinite(value) or too_low or too_high:
        raise ValueError(f"sharing.{key}={value} is out of range; accepted: {accepted}")
    return value


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key, the bad value and what is accepted; else return."""
    policy = _get(cfg, "policy")
    if policy not in POLICIES:
        raise ValueError(f"sharing.policy={policy!r} is unknown; accepted: {', '.join(POLICIES)}")
    selection = _get(cfg, "selection")
    if selection not in SELECTIONS:
        raise ValueError(f"sharing.selection={selection!r} is unknown; accepted: {', '.join(SELECTIONS)}")
    _number(cfg, "late_fraction", policy)
    late = _get(cfg, "late_rounds")
    if (
        isinstance(late, (str, bytes))
        or not hasattr(late, "__len__")
        or len(late) != 2
        or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in late)
        or not 1 <= late[0] <= late[1]
    ):
        raise ValueError(
            f"sharing.late_rounds={list(late) if hasattr(late, '__iter__') else late!r} is not accepted; "
            "accepted: two integer rounds [first, last] with 1 <= first <= last"
        )
    if policy == "fixed":
        _number(cfg, "ratio", policy)
    elif policy == "uniform":
        low, high = _number(cfg, "low", policy), _number(cfg, "high", policy)
        if low > high:
            raise ValueError(f"sharing.low={low} > sharing.high={high}; accepted: 0 <= low <= high <= 1")
    elif policy == "beta":
        _number(cfg, "a", policy, hi=None, lo_open=True)
        _number(cfg, "b", policy, hi=None, lo_open=True)
    else:
        none, full = _number(cfg, "none", policy), _number(cfg, "full", policy)
        if none + full > 1.0 + 1e-12:
            raise ValueError(
                f"sharing.none={none} + sharing.full={full} = {none + full} > 1; "
                "accepted: none + full <= 1 (the rest are partial sharers)"
            )
        low, high = _number(cfg, "partial_low", policy), _number(cfg, "partial_high", policy)
        if low > high:
            raise ValueError(
                f"sharing.partial_low={low} > sharing.partial_high={high}; "
                "accepted: 0 <= partial_low <= partial_high <= 1"
            )


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round rounds half to even (2.5 -> 2); the protocol says round half up (2.5 -> 3).
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def draw_ratios(cfg: Mapping[str, Any], n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Sharing ratio ``r_u`` in [0, 1] for each of ``n_users`` users (float64), per ``cfg.policy``.

    ``segments``: exactly ``round(none·n)`` users get 0 and ``round(full·n)`` get 1 (rounded half
    up; ``full`` gives way if rounding overshoots ``n``), picked by one random permutation; the
    others draw from the open interval (``partial_low``, ``partial_high``).
    """
    validate_config(cfg)
    policy = cfg.get("policy")
    if policy == "fixed":
        return np.full(n_users, float(cfg.get("ratio")), dtype=np.float64)
    if policy == "uniform":
        low, high = float(_get(cfg, "low")), float(_get(cfg, "high"))
        return rng.uniform(low, high, n_users)
    if policy == "beta":
        return rng.beta(float(cfg.get("a")), float(cfg.get("b")), n_users).astype(np.float64)

    n_none = min(int(_round_half_up(float(cfg.get("none")) * n_users)), n_users)
    n_full = min(int(_round_half_up(float(cfg.get("full")) * n_users)), n_users - n_none)
    perm = rng.permutation(n_users)
    ratios = np.empty(n_users, dtype=np.float64)
    ratios[perm[:n_none]] = 0.0
    ratios[perm[n_none : n_none + n_full]] = 1.0
    partial = perm[n_none + n_full :]
    low, high = float(_get(cfg, "partial_low")), float(_get(cfg, "partial_high"))
    # Open interval: a "partial" user must not silently become a none/full sharer.
    lo_open, hi_open = np.nextafter(low, high), np.nextafter(high, low)
    ratios[partial] = np.clip(rng.uniform(lo_open, high, len(partial)), min(lo_open, hi_open), hi_open)
    return ratios


def shared_counts(train: UserCSR, ratios: np.ndarray) -> np.ndarray:
    """``|S_u| = round_half_up(r_u · |D_u|)`` per user (int64)."""
    return np.clip(_round_half_up(np.asarray(ratios) * train.degrees), 0, train.degrees)


def select_shared(train: UserCSR, ratios: np.ndarray, selection: str, rng: np.random.Generator) -> np.ndarray:
    """Bool mask aligned with the entries of ``train``: True where the interaction is shared.

    Each entry gets a sort key (random, or ``-time`` for ``recent`` with random tie-breaks);
    entries are ranked within their user by that key and the first ``|S_u|`` are shared.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (train.n_users,):
        raise ValueError(f"ratios has shape {ratios.shape}; expected ({train.n_users},), one per user")
    if not np.all((ratios >= 0.0) & (ratios <= 1.0)):  # also rejects NaN
        raise ValueError("ratios must lie in [0, 1] (no NaN)")
    if selection not in SELECTIONS:
        raise ValueError(f"sharing.selection={selection!r} is unknown; accepted: {', '.join(SELECTIONS)}")
    if selection == "recent" and train.times is None:
        raise ValueError(
            "sharing.selection=recent needs a dataset with timestamps; this one has none "
            f"(train.times is None). Datasets with a time order: {', '.join(TIMED_DATASETS)}. "
            "Or use sharing.selection=random."
        )
    users = train.users
    tie_break = rng.random(len(users))
    if selection == "random":
        order = np.lexsort((tie_break, users))
    else:
        order = np.lexsort((tie_break, -np.asarray(train.times, dtype=np.float64), users))
    # CSR entries are already grouped by user, so the sorted position minus the row start is
    # the rank of the entry within its user.
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users), dtype=np.int64) - train.indptr[users]
    return rank < shared_counts(train, ratios)[users]


def realised_ratios(train: UserCSR, shared_mask: np.ndarray) -> np.ndarray:
    """``|S_u| / |D_u|`` per user (float64); users with no training interactions get 0."""
    n_shared = np.bincount(train.users[shared_mask], minlength=train.n_users)
    return n_shared / np.maximum(train.degrees, 1)


def share_groups(realised: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group index per user and the group names ``0``, ``(0,0.5]``, ``(0.5,1)``, ``1``.

    Pass the *realised* ratios (:func:`realised_ratios`), not the drawn ones: a user who drew
    0.1 but has 4 interactions shares nothing and belongs with the non-sharers.
    """
    realised = np.asarray(realised, dtype=np.float64)
    groups = np.select([realised <= 0.0, realised <= 0.5, realised < 1.0], [0, 1, 2], default=3).astype(
        np.int64
    )
    return groups, list(GROUP_NAMES)


def ratio_histogram(ratios: np.ndarray, bins: int = 10) -> str:
    """Counts per ratio bin over [0, 1], one line, e.g. ``[0,0.1) 12 | ... | [0.9,1] 40``.

    Exact 0 and 1 are counted again at the end, since segments put many users on those points.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    counts, edges = np.histogram(ratios, bins=bins, range=(0.0, 1.0))
    cells = [
        f"[{edges[i]:.3g},{edges[i + 1]:.3g}{']' if i == bins - 1 else ')'} {c}" for i, c in enumerate(counts)
    ]
    mean = float(ratios.mean()) if len(ratios) else float("nan")
    return (
        f"ratios n={len(ratios)} mean={mean:.3f}: "
        + " | ".join(cells)
        + f"; =0: {int((ratios == 0).sum())}, =1: {int((ratios == 1).sum())}"
    )


def sharing_summary(train: UserCSR, shared_mask: np.ndarray) -> dict[str, float | int]:
    """Counts for logging: users per realised-ratio group, shared/local interactions, mean ratio.

    ``mean_ratio`` averages the realised ratio over users with training data;
    ``shared_fraction`` is the share of all training interactions that are shared.
    """
    realised = realised_ratios(train, shared_mask)
    groups, names = share_groups(realised)
    has_data = train.degrees > 0
    n_shared = int(np.count_nonzero(shared_mask))
    total = len(train.items)
    out: dict[str, float | int] = {
        "n_users": train.n_users,
        "n_users_no_train": int((~has_data).sum()),
        "n_shared": n_shared,
        "n_local": total - n_shared,
        "shared_fraction": n_shared / total if total else 0.0,
        "mean_ratio": float(realised[has_data].mean()) if has_data.any() else 0.0,
    }
    per_group = np.bincount(groups, minlength=len(names))
    for g, name in enumerate(names):
        out[f"n_users/share={name}"] = int(per_group[g])
    return out


def draw_start_rounds(
    cfg: Mapping[str, Any], shared_mask: np.ndarray, users: np.ndarray, n_users: int, rng: np.random.Generator
) -> np.ndarray:
    """Round (1-based) at which each user's shared interactions enter the server graph.

    Users who share nothing get ``NEVER`` (-1). Of the users who share, ``round(late_fraction·n)``
    (rounded half up, picked at random) start at a round drawn uniformly in ``late_rounds``;
    the others start at round 1. ``users`` is the user of each entry of ``shared_mask``.
    """
    validate_config(cfg)
    sharing = np.bincount(np.asarray(users)[shared_mask], minlength=n_users) > 0
    start = np.where(sharing, 1, NEVER).astype(np.int64)
    sharers = np.flatnonzero(sharing)
    n_late = min(int(_round_half_up(float(_get(cfg, "late_fraction")) * len(sharers))), len(sharers))
    if n_late:
        first, last = (int(r) for r in _get(cfg, "late_rounds"))
        late = rng.permutation(sharers)[:n_late]
        start[late] = rng.integers(first, last + 1, n_late)
    return start


@dataclass(frozen=True)
class Partition:
    """One dataset, split once and partitioned per user into local and shared: what the data
    module holds (`datamodules.federated`) and what a Flower node keeps its shard of."""

    data: InteractionData
    train: UserCSR
    valid: UserCSR
    test: UserCSR
    share_ratio_drawn: np.ndarray
    shared_mask: np.ndarray
    shared: UserCSR
    local: UserCSR
    share_ratio: np.ndarray
    share_group: np.ndarray
    group_names: list[str]
    share_start: np.ndarray


def partition(cfg: Any) -> Partition:
    """Load ``cfg.data``, split it, draw every user's ratio, shared part and start round."""
    data = load_dataset(cfg.data, seed=cfg.seed)
    n_users, n_items = data.n_users, data.n_items
    train = to_csr(data.train, n_users, n_items)
    rng = numpy_generator(cfg.seed, "sharing")
    ratio_drawn = draw_ratios(cfg.sharing, n_users, rng)
    shared_mask = select_shared(train, ratio_drawn, cfg.sharing.selection, rng)
    share_ratio = realised_ratios(train, shared_mask)
    share_group, group_names = share_groups(share_ratio)
    # its own stream: adding late sharers never changes who shares what
    share_start = draw_start_rounds(
        cfg.sharing, shared_mask, train.users, n_users, numpy_generator(cfg.seed, "sharing-start")
    )
    return Partition(
        data,
        train,
        to_csr(data.valid, n_users, n_items),
        to_csr(data.test, n_users, n_items),
        ratio_drawn,
        shared_mask,
        train.select(shared_mask),
        train.select(~shared_mask),
        share_ratio,
        share_group,
        list(group_names),
        share_start,
    )
