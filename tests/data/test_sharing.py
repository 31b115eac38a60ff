import numpy as np
import pytest
from omegaconf import OmegaConf

from fedshare.data.interactions import Split, UserCSR, to_csr
from fedshare.data.sharing import (
    draw_ratios,
    ratio_histogram,
    realised_ratios,
    select_shared,
    share_groups,
    sharing_summary,
)
from tests.conftest import sharing_cfg


def _train(n_users: int = 300, n_items: int = 500, seed: int = 0, with_times: bool = True) -> UserCSR:
    """Random training table; degrees 0..40 so rounding, empty users and full users all occur."""
    rng = np.random.default_rng(seed)
    degrees = rng.integers(0, 41, n_users)
    users = np.repeat(np.arange(n_users), degrees)
    items = rng.integers(0, n_items, len(users))
    times = rng.permutation(len(users)).astype(np.float64) if with_times else None
    return to_csr(Split(users, items, times), n_users, n_items)


# --- policies ---------------------------------------------------------------------------------


def test_fixed_is_exact():
    r = draw_ratios(sharing_cfg("fixed", ratio=0.3), 100, np.random.default_rng(0))
    assert r.dtype == np.float64 and np.all(r == 0.3)


def test_segments_exact_counts():
    cfg = OmegaConf.create(sharing_cfg("segments", none=0.25, full=0.15))
    r = draw_ratios(cfg, 1002, np.random.default_rng(0))
    # round half up: 0.25 * 1002 = 250.5 -> 251; 0.15 * 1002 = 150.3 -> 150
    assert (r == 0).sum() == 251 and (r == 1).sum() == 150
    partial = r[(r > 0) & (r < 1)]
    assert len(partial) == 1002 - 251 - 150
    assert 0.4 < partial.mean() < 0.6


def test_segments_partial_range_is_open():
    cfg = sharing_cfg("segments", none=0.0, full=0.0, partial_low=0.2, partial_high=0.4)
    r = draw_ratios(cfg, 10_000, np.random.default_rng(0))
    assert np.all((r > 0.2) & (r < 0.4))


def test_segments_users_are_random():
    cfg = sharing_cfg("segments", none=0.5, full=0.5)
    a = draw_ratios(cfg, 1000, np.random.default_rng(0))
    b = draw_ratios(cfg, 1000, np.random.default_rng(1))
    assert (a == 0).sum() == (b == 0).sum() == 500
    assert not np.array_equal(a, b)
    assert 0 < (a[:500] == 0).sum() < 500  # not simply the first users


def test_uniform_mean():
    r = draw_ratios(sharing_cfg("uniform", low=0.2, high=0.6), 10_000, np.random.default_rng(0))
    assert np.array_equal(r, np.random.default_rng(0).uniform(0.2, 0.6, 10_000))  # low, high as given
    assert abs(r.mean() - 0.4) < 0.01


def test_beta_mean():
    r = draw_ratios(sharing_cfg("beta", a=2.0, b=5.0), 10_000, np.random.default_rng(0))
    assert np.array_equal(r, np.random.default_rng(0).beta(2.0, 5.0, 10_000))  # a and b not swapped
    assert abs(r.mean() - 2 / 7) < 0.01


# --- invalid configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, key",
    [
        (sharing_cfg("fixed", policy="gaussian"), "sharing.policy"),
        (sharing_cfg("fixed", policy=None), "sharing.policy"),
        (sharing_cfg("fixed", ratio=1.5), "sharing.ratio"),
        (sharing_cfg("fixed", ratio=-0.1), "sharing.ratio"),
        (sharing_cfg("fixed", ratio="half"), "sharing.ratio"),
        (sharing_cfg("fixed", ratio=None), "sharing.ratio"),
        (sharing_cfg("uniform", low=0.7, high=0.3), "sharing.low"),
        (sharing_cfg("beta", a=0.0, b=1.0), "sharing.a"),
        (sharing_cfg("beta", a=1.0, b=-2.0), "sharing.b"),
        (sharing_cfg("segments", none=0.6, full=0.5), "sharing.none"),
        (
            sharing_cfg("segments", none=0.1, full=0.1, partial_low=0.9, partial_high=0.2),
            "sharing.partial_low",
        ),
        (sharing_cfg("fixed", ratio=0.5, selection="oldest"), "sharing.selection"),
        (sharing_cfg("fixed", late_fraction=None), "sharing.late_fraction"),  # no copy of the YAML's
    ],
)
def test_invalid_config_names_key(cfg, key):
    with pytest.raises(ValueError) as err:
        draw_ratios(OmegaConf.create(cfg), 10, np.random.default_rng(0))
    message = str(err.value)
    assert key in message
    assert "accepted" in message or "missing" in message


def test_whole_config_instead_of_group_is_explained():
    with pytest.raises(ValueError, match=r"cfg\.sharing"):
        draw_ratios({"sharing": sharing_cfg("fixed", ratio=0.5)}, 10, np.random.default_rng(0))


def test_unknown_policy_lists_accepted():
    with pytest.raises(ValueError, match="fixed, uniform, beta, segments"):
        draw_ratios(sharing_cfg("fixed", policy="gaussian"), 10, np.random.default_rng(0))


# --- selection -----------------------------------------------------------------------------------


def test_sizes_are_round_half_up_for_every_user():
    train = _train()
    ratios = draw_ratios(sharing_cfg("uniform"), train.n_users, np.random.default_rng(0))
    odd = np.flatnonzero(train.degrees % 2 == 1)
    ratios[odd[::2]] = 0.5  # exact halves: x.5 must round up
    mask = select_shared(train, ratios, "random", np.random.default_rng(1))
    assert mask.dtype == bool and mask.shape == train.items.shape
    n_shared = np.bincount(train.users[mask], minlength=train.n_users)
    expected = np.floor(ratios * train.degrees + 0.5).astype(np.int64)
    np.testing.assert_array_equal(n_shared, expected)


def test_round_half_up_not_bankers():
    # degree 5, ratio 0.5 -> 2.5 -> 3 (np.round would give 2); degree 1, ratio 0.5 -> 1.
    train = to_csr(Split(np.array([0] * 5 + [1]), np.arange(6)), 2, 6)
    mask = select_shared(train, np.array([0.5, 0.5]), "random", np.random.default_rng(0))
    assert mask[:5].sum() == 3 and mask[5]


def test_same_seed_same_partition_different_seed_different():
    train = _train()
    ratios = np.full(train.n_users, 0.5)
    a = select_shared(train, ratios, "random", np.random.default_rng(7))
    b = select_shared(train, ratios, "random", np.random.default_rng(7))
    c = select_shared(train, ratios, "random", np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(
        np.bincount(train.users[a], minlength=train.n_users),
        np.bincount(train.users[c], minlength=train.n_users),
    )


def test_recent_picks_latest():
    train = _train()
    ratios = np.random.default_rng(3).uniform(size=train.n_users)
    mask = select_shared(train, ratios, "recent", np.random.default_rng(0))
    for u in range(train.n_users):
        sl = slice(train.indptr[u], train.indptr[u + 1])
        times, shared = train.times[sl], mask[sl]
        if shared.any() and (~shared).any():
            assert times[shared].min() > times[~shared].max()
    expected = np.floor(ratios * train.degrees + 0.5)
    np.testing.assert_array_equal(np.bincount(train.users[mask], minlength=train.n_users), expected)


def test_recent_hand_made():
    # user 0 items 10, 11, 12 at times 5, 1, 9; sharing 2 of 3 shares items 12 and 10.
    train = to_csr(Split(np.array([0, 0, 0]), np.array([10, 11, 12]), np.array([5.0, 1.0, 9.0])), 1, 13)
    mask = select_shared(train, np.array([0.6]), "recent", np.random.default_rng(0))
    assert sorted(train.items[mask].tolist()) == [10, 12]


def test_recent_without_times_errors():
    train = _train(with_times=False)
    with pytest.raises(ValueError, match="sharing.selection=recent.*timestamps.*ml-100k"):
        select_shared(train, np.full(train.n_users, 0.5), "recent", np.random.default_rng(0))


def test_unknown_selection_errors():
    train = _train()
    with pytest.raises(ValueError, match="sharing.selection='latest'.*random, recent"):
        select_shared(train, np.full(train.n_users, 0.5), "latest", np.random.default_rng(0))


def test_bad_ratios_error():
    train = _train()
    with pytest.raises(ValueError, match="shape"):
        select_shared(train, np.full(3, 0.5), "random", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_shared(train, np.full(train.n_users, np.nan), "random", np.random.default_rng(0))


# --- groups and summaries ------------------------------------------------------------------------


def test_share_groups_boundaries():
    groups, names = share_groups(np.array([0.0, 1e-9, 0.5, 0.5000001, 0.99, 1.0]))
    assert names == ["0", "(0,0.5]", "(0.5,1)", "1"]
    assert groups.dtype == np.int64
    assert groups.tolist() == [0, 1, 1, 2, 2, 3]


def test_realised_ratios_and_groups():
    # user 0: 4 items, ratio 0.1 -> 0 shared (group "0" although it drew > 0);
    # user 1: 2 items, ratio 0.5 -> 1; user 2: no data -> 0; user 3: 3 items, 0.9 -> 3 (all).
    users = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3])
    train = to_csr(Split(users, np.arange(9)), 4, 9)
    mask = select_shared(train, np.array([0.1, 0.5, 0.7, 0.9]), "random", np.random.default_rng(0))
    realised = realised_ratios(train, mask)
    np.testing.assert_allclose(realised, [0.0, 0.5, 0.0, 1.0])
    groups, _ = share_groups(realised)
    assert groups.tolist() == [0, 1, 0, 3]

    summary = sharing_summary(train, mask)
    assert summary["n_users"] == 4 and summary["n_users_no_train"] == 1
    assert summary["n_shared"] == 4 and summary["n_local"] == 5
    assert summary["n_users/share=0"] == 2 and summary["n_users/share=(0,0.5]"] == 1
    assert summary["n_users/share=(0.5,1)"] == 0 and summary["n_users/share=1"] == 1
    assert summary["mean_ratio"] == pytest.approx(0.5)
    assert summary["shared_fraction"] == pytest.approx(4 / 9)


def test_ratio_histogram():
    text = ratio_histogram(np.array([0.0, 0.0, 0.05, 0.55, 1.0]), bins=10)
    assert "n=5" in text
    assert "[0,0.1) 3" in text and "[0.5,0.6) 1" in text and "[0.9,1] 1" in text
    assert "=0: 2" in text and "=1: 1" in text


def test_start_rounds_late_sharers_only_among_sharers() -> None:
    from fedshare.data.sharing import NEVER, draw_start_rounds

    users = np.repeat(np.arange(10), 3)
    mask = np.zeros(30, dtype=bool)
    mask[: 3 * 8] = True  # users 0..7 share, 8 and 9 do not
    cfg = sharing_cfg("fixed", ratio=0.5, late_fraction=0.5, late_rounds=[4, 6])
    start = draw_start_rounds(cfg, mask, users, 10, np.random.default_rng(0))
    assert start[8] == start[9] == NEVER
    assert (start[:8] == 1).sum() == 4 and set(start[:8][start[:8] > 1].tolist()) <= {4, 5, 6}
    none_late = draw_start_rounds({**cfg, "late_fraction": 0.0}, mask, users, 10, np.random.default_rng(0))
    assert (none_late[:8] == 1).all()


@pytest.mark.parametrize("late", [[5, 2], [0, 3], [1], "soon", [1.5, 2]])
def test_bad_late_rounds_are_named(late) -> None:
    with pytest.raises(ValueError, match="sharing.late_rounds"):
        from fedshare.data.sharing import validate_config

        validate_config(sharing_cfg("fixed", ratio=0.5, late_rounds=late))
