"""FedShare's round: alignment equals its per-client reference, sharing-free FedShare is FedMF,
the server sees shared edges only, late sharers join the graph on time, ablations run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshare import train as train_mod
from fedshare.config import compose
from fedshare.federated.fedshare import ViewMessage, make_clients
from fedshare.federated.rounds import client_round, client_round_reference, cohort_data, plan_round
from fedshare.run.folder import RunFolderError
from fedshare.seeding import torch_generator
from tests.conftest import model_kwargs
from tests.helpers.privacy import unshared_pairs

REPO = Path(__file__).resolve().parents[2]


def _random_cohort(n_users=12, n_items=30, seed=0):
    g = np.random.default_rng(seed)
    indptr, items = [0], []
    for _ in range(n_users):
        row = np.sort(g.choice(n_items, size=int(g.integers(2, 9)), replace=False))
        items.extend(row.tolist())
        indptr.append(len(items))
    return torch.tensor(indptr), torch.tensor(items)


@pytest.mark.parametrize("epochs", [1, 2])
def test_alignment_round_matches_per_client_reference(epochs: int) -> None:
    n_users, n_items, dim = 12, 30, 8
    indptr, items = _random_cohort(n_users, n_items)
    kw = dict(dim=dim, init_std=0.1, local_epochs=epochs, batch_size=3, lr=0.5, reg=1e-3, seed=0)
    clients = make_clients(
        n_users, torch_generator(0, "init"), **model_kwargs("fedshare", **kw, lambda_cl=0.5, tau=0.3)
    )
    cohort = torch.arange(n_users)
    gen = torch.Generator().manual_seed(1)
    sharing = torch.tensor([1, 2, 5, 7, 11])
    views = ViewMessage(
        sharing,
        torch.randn(5, dim, generator=gen),
        torch.randn(4, dim, generator=gen),  # the pool: centroids, no ids
        torch.randn(n_items, dim, generator=gen),
    )
    data = cohort_data(cohort, indptr, items)
    plan = plan_round(data, n_items, epochs, gen)
    q = torch.randn(n_items, dim, generator=gen) * 0.1
    p0 = torch.randn(n_users, dim, generator=gen) * 0.1
    losses: list[torch.Tensor] = []
    align = clients._aligner(cohort, views, losses)
    rows, up, _ = client_round(p0, q, data, plan, 0.5, 1e-3, 3, after_epoch=align)
    ref_rows, ref_up, _ = client_round_reference(p0, q, data, plan, 0.5, 1e-3, 3, after_epoch=align)
    torch.testing.assert_close(rows, ref_rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(up.delta_sum, ref_up.delta_sum, atol=1e-5, rtol=0)
    # the alignment moved exactly the sharing clients' rows (compare with a round without it)
    plain, _, _ = client_round(p0, q, data, plan, 0.5, 1e-3, 3)
    moved = (rows - plain).abs().amax(1) > 1e-7
    assert moved.nonzero().squeeze(1).tolist() == sharing.tolist()
    assert losses and all(torch.isfinite(x) for x in losses)


def test_fused_scores_only_for_users_with_views() -> None:
    kw = dict(dim=3, init_std=0.1, local_epochs=1, batch_size=2, lr=0.5, reg=0.0, seed=0)
    clients = make_clients(
        4, torch_generator(0, "init"), **model_kwargs("fedshare", **kw, lambda_cl=0.1, tau=0.2)
    )
    q = torch.randn(5, 3)
    z_items = torch.randn(5, 3)
    views = ViewMessage(
        torch.tensor([1, 3]), torch.randn(2, 3), torch.zeros(0, 3), z_items
    )
    users = torch.tensor([0, 1, 2, 3])
    base = clients.user_emb[users] @ q.T
    fused = clients.score(users, q, views, beta=0.5)
    torch.testing.assert_close(fused[[0, 2]], base[[0, 2]])
    torch.testing.assert_close(fused[[1, 3]], base[[1, 3]] + 0.5 * views.user_views @ z_items.T)


def _run(overrides: list[str], out: Path):
    return train_mod.train(compose([*overrides, "logger=none", f"paths.output_dir={out}"]))


def test_no_sharing_is_exactly_fedmf(tiny: list[str], tmp_path: Path) -> None:
    common = [*tiny, "fed.rounds=3", "eval.every=1", "sharing=fixed", "sharing.ratio=0"]
    fedshare, objs = _run([*common, "experiment=fedshare"], tmp_path / "s")
    fedmf, _ = _run([*common, "experiment=fedmf"], tmp_path / "m")
    assert objs["model"].server.graph.n_edges == 0
    shared_keys = [k for k in fedmf if k.startswith(("test/", "val/"))]
    assert shared_keys and {k: fedshare[k] for k in shared_keys} == {k: fedmf[k] for k in shared_keys}


def test_server_holds_only_shared_edges_and_logs_when_they_entered(tiny: list[str], tmp_path: Path) -> None:
    overrides = [*tiny, "fed.rounds=4", "sharing.late_fraction=0.5", "sharing.late_rounds=[2,3]"]
    _, objs = _run(overrides, tmp_path)
    dm, model = objs["datamodule"], objs["model"]
    state = model.server_state()
    assert "graph.edges" in state and len(state["graph.edges"]) == len(dm.shared_edges)
    assert unshared_pairs(state, dm.shared_edges, dm.n_items) == {}
    # the check sees a leak in the graph itself: add a local-only pair to the server's graph
    leak_u, leak_i = int(dm.local.users[0]), int(dm.local.items[0])
    model.server.graph.add_edges(torch.tensor([leak_u]), torch.tensor([leak_i]), 5)
    assert unshared_pairs(model.server_state(), dm.shared_edges, dm.n_items) == {"graph.edges": 1}
    # edge log: every edge entered at its user's start round; late users at round 2 or 3
    users, items = model.server.graph.edges()
    rounds = model.server.graph.edge_rounds()
    expected = torch.from_numpy(dm.share_start)[users]
    expected[(users == leak_u) & (items == leak_i)] = 5  # the injected edge
    assert torch.equal(rounds, expected)
    late = dm.share_start[dm.share_start > 1]
    assert len(late) > 0 and set(late.tolist()) <= {2, 3}


@pytest.mark.parametrize("ablation", [["model.lambda_cl=0"], ["model.use_graph=false"], ["model.beta=0"]])
def test_ablations_run_and_learn(ablation: list[str], tiny: list[str], tmp_path: Path) -> None:
    metrics, objs = _run([*tiny, "fed.rounds=3", "eval.every=1", *ablation], tmp_path)
    assert 0.0 < metrics["test/recall@20"] <= 1.0
    assert objs["model"].server.graph.n_edges > 0


def test_kill_and_resume_gives_the_uninterrupted_result(tiny: list[str], tmp_path: Path) -> None:
    """A run SIGKILLed at the start of round 4 and resumed ends exactly like an unbroken run."""
    common = [
        *tiny,
        "fed.rounds=6",
        "eval.every=2",
        "logger=none",
        "sharing.late_fraction=0.5",
        "sharing.late_rounds=[2,5]",
        "fed.cohort_fraction=0.7",
    ]
    env = {**os.environ, "FEDSHARE_FAULT_KILL_AT_ROUND": "4"}
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedshare.train", *common, f"paths.output_dir={run}"]
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "metrics.json").exists()
    # the same command again without resume=true is refused: the folder holds a run
    assert train_mod.main([*common, f"paths.output_dir={run}"]) == 2
    resumed, objs = train_mod.train(compose([*common, "resume=true", f"paths.output_dir={run}"]))
    assert objs["trainer"].current_epoch == 6
    whole, _ = train_mod.train(compose([*common, f"paths.output_dir={tmp_path / 'whole'}"]))
    assert set(resumed) == set(whole)
    for key in whole:
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key


def test_resume_refuses_a_changed_config_or_a_finished_run(tiny: list[str], tmp_path: Path) -> None:
    common = [*tiny, "fed.rounds=2", "logger=none", f"paths.output_dir={tmp_path}"]
    with pytest.raises(RunFolderError, match="missing"):
        train_mod.train(compose([*common, "resume=true"]))
    train_mod.train(compose(common))
    with pytest.raises(RunFolderError, match="finished"):
        train_mod.train(compose([*common, "resume=true"]))
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(RunFolderError, match="model.lambda_cl"):
        train_mod.train(compose([*common, "resume=true", "model.lambda_cl=0.5"]))


def _server(**kw):
    from fedshare.federated.fedshare import GraphServer

    args = dict(
        layers=2,
        use_graph=True,
        steps=3,
        batch_size=16,
        reg=1e-4,
        lambda_cl=1.0,
        tau=0.2,
        q_align_lr=1.0,
        align_items=64,
        cl_negatives=4,
        align_graph=model_kwargs("fedshare")["align_graph"],
        negatives_group=model_kwargs("fedshare")["negatives_group"],
    )
    args.update(kw)
    server = GraphServer(6, 10, 4, torch_generator(0, "init"), 0.1, 1.0, 1.0, 0, **args)
    users = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5])
    items = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    server.receive_shares(users, items, 1)
    opt = torch.optim.Adam([server.user0, server.item0], lr=0.01)
    server.graph_step(opt)
    return server


def test_server_alignment_moves_q_and_leaves_the_graph_free_unless_asked() -> None:
    plain = _server(lambda_cl=0.0)
    q_only = _server(align_graph=False)
    both = _server(align_graph=True)
    # Q moves only through the alignment (no upload was aggregated here)
    assert torch.equal(plain.item_emb, _server(lambda_cl=0.0, q_align_lr=5.0).item_emb)
    assert not torch.allclose(q_only.item_emb, plain.item_emb)
    # align_graph=false: the graph's tables train exactly as without alignment
    assert torch.equal(q_only.item0, plain.item0) and torch.equal(q_only.user0, plain.user0)
    assert not torch.allclose(both.item0, plain.item0)
    # views are refreshed after the step, for the sharing users only
    assert torch.count_nonzero(q_only.user_view.abs().sum(1)) >= 6
    assert q_only.views().users.tolist() == [0, 1, 2, 3, 4, 5]


def _autograd_graph_step(server, optimizer) -> None:
    """The server step as autograd computes it: the definition the hand-written one must match."""
    from fedshare.federated.losses import info_nce_in_batch
    from fedshare.graph.lightgcn import EdgeSampler, bpr_loss

    sampler = EdgeSampler(server.graph)
    for _ in range(server.steps):
        users, pos, neg = sampler.sample(server.batch_size, server.step_gen)
        user_out, item_out = server.graph.propagate(server.user0, server.item0, server.layers)
        bpr, l2 = bpr_loss(user_out, item_out, server.user0, server.item0, users, pos, neg, server.reg)
        items = torch.unique(pos)
        if items.numel() > server.align_items:
            items = items[torch.randperm(items.numel(), generator=server.step_gen)[: server.align_items]]
        q_rows = server.item_emb.index_select(0, items).requires_grad_(True)
        z_rows = item_out.index_select(0, items)
        z_rows = z_rows if server.align_graph else z_rows.detach()
        loss = bpr + l2 + server.lambda_cl * info_nce_in_batch(z_rows, q_rows, server.tau).mean()
        optimizer.zero_grad(set_to_none=True)
        (q_grad,) = torch.autograd.grad(loss, q_rows, retain_graph=True)
        server.item_emb.index_add_(0, items, q_grad, alpha=-server.q_align_lr)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("layers", [0, 2])
@pytest.mark.parametrize("align_graph", [False, True])
def test_the_hand_written_server_step_is_autograds(layers: int, align_graph: bool) -> None:
    from fedshare.federated.fedshare import GraphServer

    def server():
        s = GraphServer(
            30, 40, 8, torch_generator(0, "init"), 0.1, 1.0, 1.0, 0, layers=layers, use_graph=True,
            steps=4, batch_size=64, reg=0.1, lambda_cl=0.5, tau=0.2, q_align_lr=2.0, align_items=12,
            cl_negatives=4, align_graph=align_graph, negatives_group=2,
        )
        g = torch.Generator().manual_seed(1)
        keys = torch.unique(torch.randint(0, 30 * 40, (300,), generator=g))
        s.receive_shares(keys // 40, keys % 40, 1)
        return s, torch.optim.Adam([s.user0, s.item0], lr=0.05)

    (by_hand, opt_a), (reference, opt_b), (start, _) = server(), server(), server()
    by_hand.graph_step(opt_a)
    _autograd_graph_step(reference, opt_b)
    for name in ("user0", "item0", "item_emb"):
        a, b = getattr(by_hand, name).detach(), getattr(reference, name).detach()
        assert not torch.equal(a, getattr(start, name).detach())  # it moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lambda_cl_zero_switches_off_every_alignment() -> None:
    from lightning_modules import FedShareModule

    off = FedShareModule(5, 6, **model_kwargs("fedshare", lambda_cl=0.0, lambda_item=1.0))
    assert off.clients.lambda_cl == 0 and off.server.lambda_cl == 0
    on = FedShareModule(5, 6, **model_kwargs("fedshare", lambda_cl=0.001, lambda_item=1.0))
    assert on.clients.lambda_cl == 0.001 and on.server.lambda_cl == 1.0
    fallback = FedShareModule(5, 6, **model_kwargs("fedshare", lambda_cl=0.3, lambda_item=None))
    assert fallback.server.lambda_cl == 0.3


def test_views_of_a_cohort_are_its_sharing_users_sorted(tiny: list[str]) -> None:
    from fedshare.run.build import new_model

    model = new_model(compose([*tiny, "logger=none", "experiment=fedshare"]), 40, 50)
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 40, (60,), generator=g)
    items = torch.randint(0, 50, (60,), generator=g)
    keys = torch.unique(users * 50 + items)
    model.server.receive_shares(keys // 50, keys % 50, 1)
    model.server.refresh_views()
    sharing = torch.unique(keys // 50)
    cohort = torch.randperm(40, generator=g)[:25]
    views = model.server.views(cohort, pool=False)
    assert torch.equal(views.users, sharing[torch.isin(sharing, cohort)])
    assert torch.equal(views.user_views, model.server.user_view[views.users])
    assert model.server.views(torch.tensor([u for u in range(40) if u not in sharing]), pool=False).n_sharing == 0
