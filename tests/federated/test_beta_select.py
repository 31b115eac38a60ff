"""Each device picks its own fusion weight beta_u (model.beta_select): on a held-out slice of
its local data that it does not train on, never on the validation or test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedshare import train as train_mod
from fedshare.config import compose
from fedshare.data.interactions import UserCSR
from fedshare.federated.fedshare import ViewMessage, holdout_slice, make_clients
from fedshare.seeding import torch_generator
from tests.conftest import model_kwargs


def _csr(rows: list[list[int]], n_items: int) -> UserCSR:
    indptr = np.cumsum([0, *[len(r) for r in rows]]).astype(np.int64)
    items = np.array([i for r in rows for i in sorted(r)], np.int64)
    return UserCSR(indptr, items, None, n_items)


def _population(n_users=40, n_items=60, seed=0):
    g = np.random.default_rng(seed)
    train, shared = [], []
    for u in range(n_users):
        row = sorted(g.choice(n_items, size=int(g.integers(1, 30)), replace=False).tolist())
        k = 0 if u % 4 == 0 else int(g.integers(0, len(row) + 1))  # every 4th user shares nothing
        train.append(row)
        shared.append(sorted(g.choice(row, size=k, replace=False).tolist()))
    return _csr(train, n_items), _csr(shared, n_items)


def test_the_slice_is_local_data_of_sharing_users_only() -> None:
    train, shared = _population()
    held = holdout_slice(train, shared, 0.2, seed=3)
    users, items = train.users, train.items
    shared_keys = set((shared.users * train.n_items + shared.items).tolist())
    keys = users * train.n_items + items
    assert not any(int(k) in shared_keys for k in keys[held])  # never a shared pair
    for u in range(train.n_users):
        n_local = int(train.degrees[u]) - int(shared.degrees[u])
        want = 0 if shared.degrees[u] == 0 else max(0, min(int(np.floor(0.2 * n_local + 0.5)), n_local - 1))
        assert int(held[users == u].sum()) == want, u
    assert held.any()
    # a fixed function of (seed, user, item): the same again, another seed another slice
    assert np.array_equal(held, holdout_slice(train, shared, 0.2, seed=3))
    assert not np.array_equal(held, holdout_slice(train, shared, 0.2, seed=4))


def test_a_node_holding_only_its_users_holds_out_what_the_whole_run_does() -> None:
    train, shared = _population()
    held = holdout_slice(train, shared, 0.2, seed=1)
    for shard in range(3):
        mine_t, mine_s = train.users % 3 == shard, shared.users % 3 == shard
        node_held = holdout_slice(train.select(mine_t), shared.select(mine_s), 0.2, seed=1)
        assert np.array_equal(node_held, held[mine_t])


def _clients(n_users: int, **over):
    kw = dict(dim=4, init_std=0.1, local_epochs=1, batch_size=2, lr=0.5, reg=0.0, seed=0)
    keys = model_kwargs("fedshare", **{**kw, "lambda_cl": 0.1, "tau": 0.2, "beta_select": True, **over})
    return make_clients(n_users, torch_generator(0, "init"), **keys)


def test_the_slice_leaves_the_devices_training_data() -> None:
    train, shared = _population()
    clients = _clients(train.n_users, beta_holdout=0.2)
    clients.attach_data(train, shared, np.zeros(train.n_users, np.int64))
    held = holdout_slice(train, shared, 0.2, seed=0)
    assert clients.train_items.numel() == int((~held).sum())
    assert torch.equal(clients.hold_items, torch.from_numpy(train.items[held]))
    off = _clients(train.n_users, beta_select=False)
    off.attach_data(train, shared, np.zeros(train.n_users, np.int64))
    assert off.train_items.numel() == train.items.size and off.hold_items.numel() == 0


def test_each_device_picks_the_beta_under_which_its_held_out_items_rank_best() -> None:
    n_items, dim = 16, 4
    row = list(range(8))  # each user holds items 0..7 and shares item 0 (user 2 shares nothing)
    train, shared = _csr([row] * 3, n_items), _csr([[0], [0], []], n_items)
    clients = _clients(3, beta_holdout=0.15, beta_grid=[0.0, 0.5, 1.0, 2.0])
    clients.attach_data(train, shared, np.zeros(3, np.int64))
    assert clients.hold_indptr.tolist() == [0, 1, 2, 2]  # round(0.15 * 7) = 1 local item each
    h0, h1 = clients.hold_items.tolist()
    # the local score p_u.q_i is q_i's first coordinate (user 0) or its negative (user 1); the
    # graph's z_u.z_i is nonzero on the held-out items only
    q = torch.zeros(n_items, dim)
    q[:, 0] = torch.linspace(1.0, 0.1, n_items)
    q[[h0, h1], 0] = -5.0  # user 0's local score ranks h0 last, user 1's ranks h1 first
    clients.user_emb.zero_()
    clients.user_emb[0, 0], clients.user_emb[1, 0] = 1.0, -1.0
    z_items = torch.zeros(n_items, dim)
    z_items[[h0, h1], 0] = 1.0
    # user 0's view lifts h0 to the top at beta 2 only; user 1's view sinks h1 at any beta > 0
    views = ViewMessage(
        torch.tensor([0, 1]), torch.tensor([[3.0, 0, 0, 0], [-30.0, 0, 0, 0]]), torch.zeros(0, dim), z_items
    )
    users = torch.tensor([0, 1, 2])
    scores = clients.score(users, q, views, beta=1.0)
    base = clients.user_emb[users] @ q.T
    graph = views.user_views @ z_items.T
    torch.testing.assert_close(scores[0], base[0] + 2.0 * graph[0])
    torch.testing.assert_close(scores[1], base[1])  # beta_u = 0
    torch.testing.assert_close(scores[2], base[2])  # no view: local scores
    # views that change no rank: every value ties, and the one nearest model.beta is kept
    flat = ViewMessage(torch.tensor([0, 1]), torch.zeros(2, dim), torch.zeros(0, dim), z_items)
    local = clients.user_emb[users] @ q.T
    graph = flat.user_views.index_select(0, torch.tensor([0, 1, 1])) @ z_items.T
    has = torch.tensor([True, True, False])
    picked = clients._select_beta(users, local, graph, has, torch.ones(3), torch.full((3,), 0.4), 0.4)
    torch.testing.assert_close(
        picked, torch.tensor([0.5, 0.5, 0.4])
    )  # the grid's nearest to 0.4; user 2 keeps beta


def test_a_bad_holdout_is_refused() -> None:
    with pytest.raises(ValueError, match="beta_holdout"):
        _clients(3, beta_holdout=0.0)
    with pytest.raises(ValueError, match="beta_grid"):
        _clients(3, beta_grid=[])


def test_a_run_with_beta_select_learns(tiny: list[str], tmp_path: Path) -> None:
    cfg = compose(
        [
            *tiny,
            "experiment=fedshare",
            "fed.rounds=30",  # the experiment's cap (500 rounds, stopped on patience) is for real data
            "model.beta_select=true",
            "logger=none",
            f"paths.output_dir={tmp_path}",
        ]
    )
    metrics, objs = train_mod.train(cfg)
    assert objs["model"].clients.hold_items.numel() > 0
    assert np.isfinite(metrics["test/recall@20"]) and metrics["test/recall@20"] > 0
