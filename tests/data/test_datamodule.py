"""Per-user partition into local and shared data, and what the server may see."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import FederatedDataModule
from fedshare.config import compose


def _dm(tiny: list[str], *extra: str) -> FederatedDataModule:
    dm = FederatedDataModule(compose([*tiny, *extra]))
    dm.prepare_data()
    dm.setup()
    return dm


def _pairs(users: np.ndarray, items: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(users.tolist(), items.tolist()))


def test_local_and_shared_partition_the_training_data(tiny: list[str]) -> None:
    dm = _dm(tiny)
    train = _pairs(dm.train.users, dm.train.items)
    shared = _pairs(dm.shared.users, dm.shared.items)
    local = _pairs(dm.local.users, dm.local.items)
    assert shared | local == train and not shared & local
    assert _pairs(dm.shared_edges[:, 0], dm.shared_edges[:, 1]) == shared
    held_out = _pairs(dm.valid.users, dm.valid.items) | _pairs(dm.test.users, dm.test.items)
    assert not held_out & shared  # validation and test are never shared
    counts = np.bincount(dm.shared.users, minlength=dm.n_users)
    assert np.array_equal(counts, np.floor(dm.share_ratio_drawn * dm.train.degrees + 0.5).astype(int))


def test_same_seed_same_partition_other_seed_other_partition(tiny: list[str]) -> None:
    a, b, c = _dm(tiny), _dm(tiny), _dm(tiny, "seed=1")
    assert np.array_equal(a.shared_edges, b.shared_edges)
    assert not np.array_equal(a.shared_edges, c.shared_edges)


def test_segments_and_fixed_zero(tiny: list[str]) -> None:
    dm = _dm(tiny)
    sizes = {name: int((dm.share_group == g).sum()) for g, name in enumerate(dm.group_names)}
    assert sizes["0"] == 12 and sizes["1"] == 12  # 20% / 20% of 60 users
    none = _dm(tiny, "sharing=fixed", "sharing.ratio=0")
    assert len(none.shared_edges) == 0 and len(none.local.items) == len(none.train.items)


def test_recent_selection_shares_the_latest_interactions(tiny: list[str]) -> None:
    dm = _dm(tiny, "sharing=fixed", "sharing.ratio=0.5", "sharing.selection=recent")
    for u in range(dm.n_users):
        shared_t = dm.train.times[dm.shared_mask & (dm.train.users == u)]
        local_t = dm.train.times[~dm.shared_mask & (dm.train.users == u)]
        if len(shared_t) and len(local_t):
            assert shared_t.min() >= local_t.max()


def test_eval_batches_cover_users_with_held_out_items(tiny: list[str]) -> None:
    dm = _dm(tiny)
    users = np.concatenate([b.numpy() for b in dm.test_dataloader()])
    assert np.array_equal(users, np.flatnonzero(dm.test.degrees > 0))
    assert len(list(dm.train_dataloader())) == 1  # one item per epoch: a round


def test_attributes_before_setup_are_a_clear_error(tiny: list[str]) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        _ = FederatedDataModule(compose(tiny)).n_users
