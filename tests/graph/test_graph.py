"""SharedGraph: LightGCN propagation against a torch.sparse reference, edits, edge log, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedshare.graph.dgl_compat import import_dgl
from fedshare.graph.shared_graph import SharedGraph, propagate_reference, random_edges

N_USERS, N_ITEMS, DIM = 13, 17, 4


def _embeddings(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(N_USERS, DIM, generator=gen, dtype=dtype).requires_grad_()
    item_emb = torch.randn(N_ITEMS, DIM, generator=gen, dtype=dtype).requires_grad_()
    return user_emb, item_emb


def _assert_matches_reference(graph: SharedGraph, layers: int, seed: int = 0) -> None:
    """Values and gradients of propagate equal the torch.sparse reference on the current edges."""
    users, items = graph.edges()
    outs, grads = [], []
    for fn in (
        graph.propagate,
        lambda u, i, k: propagate_reference(users, items, N_USERS, N_ITEMS, u, i, k),
    ):
        user_emb, item_emb = _embeddings(seed)
        out_u, out_i = fn(user_emb, item_emb, layers)
        # A loss that weighs every output entry differently, so gradients are not trivially equal.
        weight = torch.arange(1.0, out_u.numel() + out_i.numel() + 1).reshape(-1, DIM).sin()
        (torch.cat([out_u, out_i]) * weight).sum().backward()
        outs.append((out_u.detach(), out_i.detach()))
        grads.append((user_emb.grad, item_emb.grad))
    for got, want in zip([*outs[0], *grads[0]], [*outs[1], *grads[1]]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _graph(n_edges: int = 60, seed: int = 0, spmm: str = "auto") -> SharedGraph:
    graph = SharedGraph(N_USERS, N_ITEMS, spmm=spmm)
    users, items = random_edges(N_USERS, N_ITEMS, n_edges, seed=seed)
    assert graph.add_edges(users, items, round=1) == n_edges
    return graph


def _snapshot(graph: SharedGraph) -> tuple:
    src, dst = graph.g.edges()
    return id(graph.g), graph.state(), src.clone(), dst.clone(), graph.n_edges


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[4] == b[4]
    for key in ("edges", "rounds"):
        assert torch.equal(a[1][key], b[1][key])
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


# -- dgl_compat --------------------------------------------------------------------------------


def test_import_dgl_is_idempotent_and_message_passing_works():
    dgl = import_dgl()
    assert import_dgl() is dgl
    assert os.environ["DGLBACKEND"] == "pytorch"
    g = dgl.graph((torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])))
    g.ndata["h"] = torch.tensor([[1.0], [2.0], [4.0]])
    g.update_all(dgl.function.copy_u("h", "m"), dgl.function.sum("m", "h"))
    assert g.ndata["h"].reshape(-1).tolist() == [4.0, 1.0, 2.0]


def test_import_dgl_names_the_fix_when_dgl_is_missing(monkeypatch: pytest.MonkeyPatch):
    class NoDGL:
        def find_spec(self, name, path=None, target=None):
            if name == "dgl":
                raise ModuleNotFoundError("No module named 'dgl'", name="dgl")
            return None

    monkeypatch.delitem(sys.modules, "dgl")  # restored after the test
    monkeypatch.setattr(sys, "meta_path", [NoDGL(), *sys.meta_path])
    with pytest.raises(RuntimeError, match=r"pip install dgl==2\.1\.0 pandas"):
        import_dgl()


@pytest.mark.slow  # a fresh interpreter: ~2 s of importing torch and DGL
def test_import_dgl_leaves_home_alone(_isolated_home: Path):
    # DGL picks its backend once per process, so only a fresh interpreter shows whether the
    # first import writes ~/.dgl/config.json; DGLBACKEND is unset there on purpose.
    env = {k: v for k, v in os.environ.items() if k != "DGLBACKEND"}
    code = (
        "from fedshare.graph.dgl_compat import import_dgl; import torch; dgl = import_dgl(); "
        "g = dgl.graph((torch.tensor([0]), torch.tensor([1]))); g.ndata['h'] = torch.ones(2, 1); "
        "g.update_all(dgl.function.copy_u('h', 'm'), dgl.function.sum('m', 'h')); "
        "assert g.ndata['h'].reshape(-1).tolist() == [0.0, 1.0]"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "default backend" not in done.stdout + done.stderr  # DGL's first-run notice
    assert not (_isolated_home / ".dgl").exists()
    assert list(_isolated_home.iterdir()) == []


# -- propagation -------------------------------------------------------------------------------


@pytest.mark.parametrize("spmm", ["auto", "torch"])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_propagate_matches_reference(layers: int, spmm: str):
    graph = _graph(spmm=spmm)
    assert graph.backend == ("dgl" if spmm == "auto" else "torch")
    _assert_matches_reference(graph, layers)


def test_zero_layers_returns_inputs():
    graph = _graph()
    user_emb, item_emb = _embeddings()
    out_u, out_i = graph.propagate(user_emb, item_emb, 0)
    assert out_u is user_emb and out_i is item_emb


def test_propagate_is_not_the_identity():
    # Guards the reference comparison against both sides doing nothing.
    graph = _graph()
    user_emb, item_emb = _embeddings()
    out_u, _ = graph.propagate(user_emb, item_emb, 2)
    assert (out_u - user_emb).abs().max() > 0.1


def test_float64_matches_reference():
    graph = _graph()
    users, items = graph.edges()
    user_emb, item_emb = _embeddings(dtype=torch.float64)
    got = graph.propagate(user_emb, item_emb, 3)
    want = propagate_reference(users, items, N_USERS, N_ITEMS, user_emb, item_emb, 3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spmm", ["auto", "torch"])
def test_edits_are_in_place_and_propagation_follows_them(spmm: str):
    graph = _graph(40, seed=1, spmm=spmm)
    dgl_graph = graph.g
    _assert_matches_reference(graph, 3)  # builds the cached normalisation
    users, items = random_edges(N_USERS, N_ITEMS, N_USERS * N_ITEMS, seed=2)  # every pair, shuffled
    fresh = ~graph.has_edges(users, items)
    users, items = users[fresh][:30], items[fresh][:30]
    assert graph.add_edges(users, items, round=2) == 30
    assert graph.g is dgl_graph and graph.n_edges == 70 and graph.g.num_edges() == 140
    _assert_matches_reference(graph, 3, seed=1)

    cur_u, cur_i = graph.edges()
    gone = torch.arange(0, 70, 3)
    assert graph.remove_edges(cur_u[gone], cur_i[gone]) == gone.numel()
    assert graph.g is dgl_graph and graph.n_edges == 70 - gone.numel()
    assert graph.g.num_edges() == 2 * graph.n_edges
    assert not graph.has_edges(cur_u[gone], cur_i[gone]).any()
    _assert_matches_reference(graph, 3, seed=2)


def test_dgl_graph_holds_both_directions_of_exactly_the_logged_edges():
    graph = _graph()
    cur_u, cur_i = graph.edges()
    graph.remove_edges(cur_u[:10], cur_i[:10])
    src, dst = graph.g.edges()
    users, items = graph.edges()
    nodes = N_USERS + N_ITEMS
    expected = torch.cat([users * nodes + items + N_USERS, (items + N_USERS) * nodes + users])
    assert torch.equal((src * nodes + dst).sort().values, expected.sort().values)
    assert graph.g.num_nodes() == N_USERS + N_ITEMS


@pytest.mark.parametrize("spmm", ["auto", "torch"])
def test_isolated_nodes_are_finite_and_match_reference(spmm: str):
    graph = SharedGraph(N_USERS, N_ITEMS, spmm=spmm)
    graph.add_edges([0, 0, 1], [0, 1, 1], round=0)  # users 2.., items 2.. are isolated
    _assert_matches_reference(graph, 3)
    user_emb, item_emb = _embeddings()
    out_u, out_i = graph.propagate(user_emb, item_emb, 3)
    assert torch.isfinite(out_u).all() and torch.isfinite(out_i).all()
    # E_k = 0 for k >= 1 on an isolated node, so the mean over 4 layers is E_0 / 4.
    torch.testing.assert_close(out_u[2:], user_emb[2:] / 4)
    torch.testing.assert_close(out_i[2:], item_emb[2:] / 4)


def test_empty_graph_propagates_to_a_scaled_identity():
    graph = SharedGraph(N_USERS, N_ITEMS)
    user_emb, item_emb = _embeddings()
    out_u, out_i = graph.propagate(user_emb, item_emb, 2)
    torch.testing.assert_close(out_u, user_emb / 3)
    torch.testing.assert_close(out_i, item_emb / 3)


def test_spmm_backend_is_checked():
    with pytest.raises(ValueError, match=r"spmm must be one of \('auto', 'dgl', 'torch'\), got 'cuda'"):
        SharedGraph(N_USERS, N_ITEMS, spmm="cuda")


def test_from_state_keeps_the_backend():
    graph = _graph(spmm="torch")
    again = SharedGraph.from_state(N_USERS, N_ITEMS, graph.state(), spmm="torch")
    assert again.backend == "torch"
    _assert_matches_reference(again, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_propagate_on_cuda_matches_cpu():
    graph = _graph(spmm="auto")
    user_emb, item_emb = _embeddings()
    want = torch.cat(graph.propagate(user_emb, item_emb, 3))
    graph.to("cuda")
    assert graph.device.type == "cuda"
    u, i = (t.detach().cuda().requires_grad_() for t in _embeddings())
    got = torch.cat(graph.propagate(u, i, 3))
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=0, atol=1e-5)
    got.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(u.grad.cpu(), user_emb.grad, rtol=0, atol=1e-5)
    cur_u, cur_i = graph.edges()
    graph.remove_edges(cur_u[:5], cur_i[:5])  # edits still work with propagation on the GPU
    _assert_matches_reference(graph.to("cpu"), 3)


def test_propagate_checks_shapes_and_layers():
    graph = _graph()
    user_emb, item_emb = _embeddings()
    with pytest.raises(ValueError, match=r"item_emb must be \[17, d\]"):
        graph.propagate(user_emb, item_emb[:-1], 1)
    with pytest.raises(ValueError, match="layers"):
        graph.propagate(user_emb, item_emb, -1)


# -- edge log and state ------------------------------------------------------------------------


def test_edge_log_records_rounds_and_forgets_removed_edges():
    graph = SharedGraph(N_USERS, N_ITEMS)
    graph.add_edges([3, 1], [4, 2], round=5)
    graph.add_edges(torch.tensor([1, 0]), torch.tensor([0, 9]), round=7)
    users, items = graph.edges()
    log = dict(zip(zip(users.tolist(), items.tolist()), graph.edge_rounds().tolist()))
    assert log == {(3, 4): 5, (1, 2): 5, (1, 0): 7, (0, 9): 7}
    assert graph.n_edges == 4

    graph.remove_edges([1], [2])
    users, items = graph.edges()
    log = dict(zip(zip(users.tolist(), items.tolist()), graph.edge_rounds().tolist()))
    assert log == {(3, 4): 5, (1, 0): 7, (0, 9): 7}
    state = graph.state()
    assert (1 * N_ITEMS + 2) not in (state["edges"][:, 0] * N_ITEMS + state["edges"][:, 1]).tolist()
    assert graph.g.num_edges() == 6 and not graph.g.has_edges_between(1, N_USERS + 2)
    assert not graph.g.has_edges_between(N_USERS + 2, 1)


def test_empty_edits_are_no_ops():
    graph = _graph()
    before = _snapshot(graph)
    assert graph.add_edges([], [], round=3) == 0
    assert graph.remove_edges(torch.empty(0, dtype=torch.int64), []) == 0
    _assert_same(before, _snapshot(graph))


def test_state_round_trip():
    graph = _graph(50)
    users, items = graph.edges()
    graph.remove_edges(users[:5], items[:5])
    extra_u, extra_i = random_edges(N_USERS, N_ITEMS, N_USERS * N_ITEMS, seed=4)
    fresh = ~graph.has_edges(extra_u, extra_i)
    graph.add_edges(extra_u[fresh][:8], extra_i[fresh][:8], round=9)

    state = graph.state()
    assert state["edges"].shape == (graph.n_edges, 2) and state["edges"].dtype == torch.int64
    assert state["rounds"].shape == (graph.n_edges,) and state["rounds"].dtype == torch.int64
    copy = SharedGraph.from_state(N_USERS, N_ITEMS, state)
    for a, b in zip(copy.edges(), graph.edges()):
        assert torch.equal(a, b)
    assert torch.equal(copy.edge_rounds(), graph.edge_rounds())
    assert sorted(copy.edge_rounds().unique().tolist()) == [1, 9]
    user_emb, item_emb = _embeddings()
    for a, b in zip(copy.propagate(user_emb, item_emb, 3), graph.propagate(user_emb, item_emb, 3)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_from_state_keeps_each_edge_with_its_round():
    # A state written by hand (or by an older version): unsorted, rounds differing per edge.
    state = {"edges": torch.tensor([[5, 1], [0, 3], [2, 2], [0, 1]]), "rounds": torch.tensor([4, 0, 7, 2])}
    graph = SharedGraph.from_state(N_USERS, N_ITEMS, state)
    users, items = graph.edges()
    log = dict(zip(zip(users.tolist(), items.tolist()), graph.edge_rounds().tolist()))
    assert log == {(5, 1): 4, (0, 3): 0, (2, 2): 7, (0, 1): 2}
    with pytest.raises(ValueError, match=r"\(user 0, item 3\) is given twice"):
        twice = {"edges": torch.tensor([[0, 3], [0, 3]]), "rounds": torch.zeros(2, dtype=torch.int64)}
        SharedGraph.from_state(N_USERS, N_ITEMS, twice)
    with pytest.raises(ValueError, match="lacks"):
        SharedGraph.from_state(N_USERS, N_ITEMS, {"edges": state["edges"]})


def test_state_is_a_copy():
    graph = _graph()
    state = graph.state()
    state["rounds"].fill_(99)
    state["edges"].fill_(0)
    assert (graph.edge_rounds() == 1).all() and graph.edges()[1].unique().numel() > 1


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "users, items, message",
    [
        ([2, 5], [3, 17], r"\(user 5, item 17\) is out of range: users are 0\.\.12, items are 0\.\.16"),
        ([13], [0], r"\(user 13, item 0\) is out of range"),
        ([-1], [0], r"\(user -1, item 0\) is out of range"),
        ([4, 6, 4], [2, 3, 2], r"\(user 4, item 2\) is given twice"),
        ([0, 7], [0, 8], r"\(user 7, item 8\) is already in the graph \(added in round 1\)"),
    ],
)
def test_bad_add_names_the_pair_and_changes_nothing(users, items, message):
    graph = SharedGraph(N_USERS, N_ITEMS)
    graph.add_edges([7, 1], [8, 1], round=1)
    graph.propagate(*_embeddings(), 1)  # fills the normalisation cache
    before, norm = _snapshot(graph), graph.norm().clone()
    with pytest.raises(ValueError, match=message):
        graph.add_edges(users, items, round=2)
    _assert_same(before, _snapshot(graph))
    assert torch.equal(graph.norm(), norm)


@pytest.mark.parametrize(
    "users, items, message",
    [
        ([7, 2], [8, 3], r"\(user 2, item 3\) is not in the graph"),
        ([7, 99], [8, 0], r"\(user 99, item 0\) is not in the graph"),
        ([7, 7], [8, 8], r"\(user 7, item 8\) is given twice"),
    ],
)
def test_bad_remove_names_the_pair_and_changes_nothing(users, items, message):
    graph = SharedGraph(N_USERS, N_ITEMS)
    graph.add_edges([7, 1], [8, 1], round=1)
    before = _snapshot(graph)
    with pytest.raises(ValueError, match=message):
        graph.remove_edges(users, items)
    _assert_same(before, _snapshot(graph))


def test_ids_must_be_integers_and_pair_up():
    graph = SharedGraph(N_USERS, N_ITEMS)
    with pytest.raises(TypeError, match="integer ids"):
        graph.add_edges(torch.tensor([0.5]), [1], round=0)
    with pytest.raises(ValueError, match="2 users and 1 items"):
        graph.add_edges([0, 1], [1], round=0)
    assert graph.n_edges == 0


# -- neighbourhoods ----------------------------------------------------------------------------


def test_neighbourhood_on_a_path():
    # u0 - i0 - u1 - i1 - u2 - i2, and u3 - i3 apart.
    graph = SharedGraph(5, 5)
    graph.add_edges([0, 1, 1, 2, 2, 3], [0, 0, 1, 1, 2, 3], round=0)

    def hood(users, items, hops):
        u, i = graph.neighbourhood(users, items, hops)
        return u.tolist(), i.tolist()

    assert hood([0], [], 0) == ([0], [])
    assert hood([0], [], 1) == ([0], [0])
    assert hood([0], [], 2) == ([0, 1], [0])
    assert hood([0], [], 3) == ([0, 1], [0, 1])
    assert hood([], [1], 1) == ([1, 2], [1])
    assert hood([], [1], 2) == ([1, 2], [0, 1, 2])
    assert hood([3], [2], 1) == ([2, 3], [2, 3])
    assert hood([4], [4], 5) == ([4], [4])  # isolated seeds reach only themselves
    assert hood([0], [], 10) == ([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="seed item 5 is out of range 0..4"):
        graph.neighbourhood([], [5], 1)
