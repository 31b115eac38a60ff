"""generate_synthetic: memory linear in the interactions, the Plackett-Luce / Gumbel-top-k law.

The generator draws by rejection on one CDF per community and falls back to a Gumbel-top-k on
the rows of users whose degree is near ``n_items``. These tests check that no users x items
array is ever built, that both paths give each user exactly ``d_u`` distinct items, and that
their statistics match a plain Gumbel-top-k over the whole matrix (the old generator, written
out below as the reference) within loose, seed-fixed bounds.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from fedshare.data import datasets
from fedshare.data.datasets import _SYNTHETIC_STREAM, DatasetError, generate_synthetic
from tests.conftest import data_cfg


def knobs(**overrides: Any) -> dict[str, Any]:
    """configs/data/synthetic.yaml's generator knobs with ``overrides``."""
    out = data_cfg("synthetic")["synthetic"]
    unknown = sorted(set(overrides) - set(out))
    assert not unknown, unknown
    return {**out, **overrides}


def layout(k: dict[str, Any]) -> dict[str, np.ndarray]:
    """The draws that open the generator's stream: popularity ranks, communities and degrees."""
    rng = np.random.default_rng(np.random.SeedSequence([int(k["seed"]), _SYNTHETIC_STREAM]))
    n_users, n_items = k["n_users"], k["n_items"]
    rank = rng.permutation(n_items)
    item_comm = rng.integers(k["n_communities"], size=n_items)
    user_comm = rng.integers(k["n_communities"], size=n_users)
    activity = rng.lognormal(0.0, k["activity_sigma"], size=n_users)
    extra = k["n_interactions"] - n_users * k["min_user_interactions"]
    degrees = np.minimum(
        k["min_user_interactions"] + rng.multinomial(extra, activity / activity.sum()), n_items
    )
    return {"rank": rank, "item_comm": item_comm, "user_comm": user_comm, "degrees": degrees}


def logits(k: dict[str, Any], lay: dict[str, np.ndarray]) -> np.ndarray:
    """users x items logits (small sizes only): the weights are ``exp`` of these."""
    same = lay["user_comm"][:, None] == lay["item_comm"][None, :]
    return k["affinity"] * same - k["popularity_exponent"] * np.log1p(lay["rank"])[None, :]


def reference(k: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k over the dense matrix (the previous generator): (users, items)."""
    lay = layout(k)
    scores = logits(k, lay) + np.random.default_rng(seed).gumbel(size=(k["n_users"], k["n_items"]))
    ranked = np.argsort(-scores, axis=1)
    take = np.arange(k["n_items"])[None, :] < lay["degrees"][:, None]
    return np.repeat(np.arange(k["n_users"]), lay["degrees"]), ranked[take]


def item_shares(items: np.ndarray, n_items: int) -> np.ndarray:
    return np.bincount(items, minlength=n_items) / len(items)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two distributions."""
    return float(0.5 * np.abs(p - q).sum())


def off_reference(k: dict[str, Any], items: np.ndarray, seed: int) -> tuple[float, float]:
    """(TV of the item shares of ``items`` to a reference draw's, TV between two reference draws:
    the sampling noise it is measured against)."""
    n = k["n_items"]
    ref, other = (item_shares(reference(k, s)[1], n) for s in (seed, seed + 1))
    return tv(item_shares(items, n), ref), tv(ref, other)


def in_community(k: dict[str, Any], users: np.ndarray, items: np.ndarray) -> float:
    lay = layout(k)
    return float(np.mean(lay["user_comm"][users] == lay["item_comm"][items]))


def check_rows(k: dict[str, Any], users: np.ndarray, items: np.ndarray) -> None:
    """Users ascending, each with its drawn degree of distinct, in-range, sorted items."""
    degrees = layout(k)["degrees"]
    assert np.array_equal(np.bincount(users, minlength=k["n_users"]), degrees)
    assert np.all(np.diff(users) >= 0)
    keys = users * k["n_items"] + items
    assert np.all(np.diff(keys) > 0)  # distinct, and sorted within each user
    assert items.min() >= 0 and items.max() < k["n_items"]


def spy_paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record which users each drawing path gets."""
    seen: dict[str, list[int]] = {"sparse": [], "dense": []}
    for path in seen:
        real = getattr(datasets, f"_draw_{path}")

        def spy(
            rng: Any, row: Any, users: np.ndarray, *rest: Any, _real: Any = real, _path: str = path
        ) -> None:
            seen[_path].extend(users.tolist())
            _real(rng, row, users, *rest)

        monkeypatch.setattr(datasets, f"_draw_{path}", spy)
    return seen


def force_path(monkeypatch: pytest.MonkeyPatch, dense: bool) -> None:
    monkeypatch.setattr(datasets, "_needs_dense", lambda weights, degrees: np.full(len(degrees), dense))


# ----------------------------------------------------------------------------------------------


def test_no_users_by_items_array_is_allocated() -> None:
    k = knobs(n_users=20_000, n_items=20_000, n_interactions=200_000, min_user_interactions=5)
    tracemalloc.start()
    try:
        raw = generate_synthetic(k)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the output itself is 24 bytes an interaction (4.6 MiB); one int32 users x items array would
    # be 1,526 MiB, fifty times the bound
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert len(raw) == 200_000
    check_rows(k, raw.users, raw.items)


def test_synthetic_is_deterministic_with_the_default_size() -> None:
    k = knobs()
    a, b = generate_synthetic(k), generate_synthetic({**k, "seed": 0})
    assert (
        np.array_equal(a.users, b.users)
        and np.array_equal(a.items, b.items)
        and np.array_equal(a.times, b.times)
    )
    assert len(a) == 100_000 and a.users.max() == 999 and a.items.max() < 2000
    check_rows(k, a.users, a.items)
    c = generate_synthetic({**k, "seed": 1})
    assert not np.array_equal(a.items, c.items)
    counts = np.sort(np.bincount(a.items, minlength=2000))[::-1]
    assert counts[:20].sum() > 10 * counts[-20:].sum()  # heavy head: power-law popularity
    assert a.times.min() >= k["time_start"] and a.times.max() < k["time_start"] + k["time_span_days"] * 86_400
    assert np.array_equal(a.times, np.floor(a.times))


def test_degrees_are_the_drawn_activities_and_sum_to_n_interactions() -> None:
    k = knobs(n_users=3000, n_items=500, n_interactions=60_000, activity_sigma=1.2, seed=4)
    raw = generate_synthetic(k)
    assert len(raw) == 60_000
    check_rows(k, raw.users, raw.items)


def test_one_draw_each_hits_the_community_as_often_as_the_weights_say() -> None:
    """Degree 1: each user's item is one draw, in its community with probability W_c / W."""
    k = knobs(n_users=20_000, n_items=1000, n_interactions=20_000, min_user_interactions=1, seed=2)
    raw = generate_synthetic(k)
    lay = layout(k)
    weights = np.exp(logits(k, {**lay, "user_comm": np.arange(k["n_communities"])}))
    same = np.arange(k["n_communities"])[:, None] == lay["item_comm"][None, :]
    p_in = (weights * same).sum(1) / weights.sum(1)  # per community
    expected = p_in[lay["user_comm"]].mean()
    sd = np.sqrt((p_in * (1 - p_in))[lay["user_comm"]].sum()) / k["n_users"]
    assert abs(in_community(k, raw.users, raw.items) - expected) < 5 * sd


@pytest.mark.parametrize("path", ["default", "sparse", "dense"])
def test_each_path_matches_the_dense_gumbel_top_k(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item shares and in-community share agree with the reference within sampling noise;
    sampling with replacement (repeats merely dropped) misses by far more."""
    if path != "default":
        force_path(monkeypatch, path == "dense")
    k = knobs(n_users=4000, n_items=200, n_interactions=120_000, n_communities=4, seed=3)
    raw = generate_synthetic(k)
    check_rows(k, raw.users, raw.items)
    off, noise = off_reference(k, raw.items, seed=11)
    assert off < 2 * noise, (off, noise)
    ref_users, ref_items = reference(k, seed=11)
    assert abs(in_community(k, raw.users, raw.items) - in_community(k, ref_users, ref_items)) < 0.01
    if path != "default":
        return
    # what the test would catch: i.i.d. draws with repeats dropped, no top-up
    p = np.exp(logits(k, layout(k)))
    p /= p.sum(1, keepdims=True)
    rng = np.random.default_rng(5)
    drawn = [np.unique(rng.choice(200, size=d, p=row)) for d, row in zip(layout(k)["degrees"], p)]
    assert tv(item_shares(np.concatenate(drawn), 200), item_shares(ref_items, 200)) > 4 * noise


def test_small_chunks_draw_the_same_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users split over many sparse chunks (and top-up rounds) still get their exact degrees."""
    monkeypatch.setattr(datasets, "_SYNTHETIC_CHUNK", 200)  # about ten users a chunk
    force_path(monkeypatch, False)
    k = knobs(n_users=400, n_items=100, n_interactions=8000, seed=6)
    raw = generate_synthetic(k)
    check_rows(k, raw.users, raw.items)
    off, noise = off_reference(k, raw.items, seed=13)
    assert off < 2 * noise, (off, noise)


def test_users_with_degree_near_n_items_take_the_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_paths(monkeypatch)
    monkeypatch.setattr(datasets, "_SYNTHETIC_DENSE_BLOCK", 200)  # several blocks of 3 rows
    k = knobs(n_users=300, n_items=60, n_interactions=300 * 57, min_user_interactions=54, seed=7)
    raw = generate_synthetic(k)
    check_rows(k, raw.users, raw.items)
    degrees = layout(k)["degrees"]
    assert sorted(seen["dense"]) == list(range(300)) and not seen["sparse"]
    assert degrees.min() >= 54 and np.any(degrees == 60)  # some users take every item

    def left_out(items: np.ndarray) -> np.ndarray:  # share of the left-out slots per item
        missed = 300 - np.bincount(items, minlength=60)
        return missed / missed.sum()

    ref, other = left_out(reference(k, seed=14)[1]), left_out(reference(k, seed=15)[1])
    noise = tv(ref, other)
    assert tv(left_out(raw.items), ref) < 2 * noise  # the light items, as often as the reference
    assert tv(np.full(60, 1 / 60), ref) > 4 * noise  # leaving out at random would fail


def test_small_degrees_stay_on_the_sparse_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_paths(monkeypatch)
    k = knobs(n_users=2000, n_items=20_000, n_interactions=40_000)
    generate_synthetic(k)
    assert sorted(seen["sparse"]) == list(range(2000)) and not seen["dense"]


def test_popularity_exponent_shapes_item_popularity() -> None:
    base = {"n_users": 2000, "n_items": 1000, "n_interactions": 40_000, "affinity": 0.0}
    flat, steep = (knobs(**base, popularity_exponent=e) for e in (0.0, 1.0))
    mean_rank = {}
    for name, k in (("flat", flat), ("steep", steep)):
        raw = generate_synthetic(k)
        mean_rank[name] = layout(k)["rank"][raw.items].mean()
    assert abs(mean_rank["flat"] - 499.5) < 10  # uniform: the average rank
    assert mean_rank["steep"] < 350  # Zipf: popular (low-rank) items dominate


def test_affinity_zero_ignores_communities() -> None:
    k = knobs(n_users=2000, n_items=1000, n_interactions=20_000, affinity=0.0, popularity_exponent=0.0)
    raw = generate_synthetic(k)
    assert abs(in_community(k, raw.users, raw.items) - 1 / k["n_communities"]) < 0.01


def test_synthetic_needs_every_knob() -> None:
    k = knobs()
    del k["n_items"]
    with pytest.raises(DatasetError, match=r"^data\.synthetic\.n_items is missing; "):
        generate_synthetic(k)
    with pytest.raises(DatasetError, match=r"^data\.synthetic must map every generator knob"):
        datasets.load_dataset(data_cfg("synthetic", synthetic=None), seed=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_itmes": 5}, r"unknown keys \['n_itmes'\] in data\.synthetic; accepted: "),
        ({"n_users": 0}, r"data\.synthetic: n_users, n_items, n_communities and min_user_interactions"),
        (
            {"n_interactions": 5},
            r"data\.synthetic\.n_interactions=5 must lie in \[n_users \* min_user_interactions, ",
        ),
        ({"n_interactions": 2_000_001}, r"data\.synthetic\.n_interactions=2000001 must lie in"),
    ],
)
def test_bad_knobs_name_the_key(overrides: dict[str, Any], message: str) -> None:
    k = {**knobs(), **overrides}
    with pytest.raises(DatasetError, match=message):
        generate_synthetic(k)
