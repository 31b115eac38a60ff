"""LightGCN pieces shared by the FedShare server and the centralized upper bound."""

from __future__ import annotations

from pathlib import Path

import torch

from fedshare import train as train_mod
from fedshare.config import compose
from fedshare.graph.lightgcn import EdgeSampler, bpr_loss
from fedshare.graph.shared_graph import SharedGraph


def _graph() -> SharedGraph:
    g = SharedGraph(5, 8)
    users = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
    items = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3])
    g.add_edges(users, items, 1)
    return g


def test_sampler_negatives_are_never_edges_and_epochs_cover_every_edge() -> None:
    g = _graph()
    sampler = EdgeSampler(g)
    gen = torch.Generator().manual_seed(0)
    users, pos, neg = sampler.sample(2000, gen)
    keys = set((g.edges()[0] * 8 + g.edges()[1]).tolist())
    assert all(int(u) * 8 + int(i) in keys for u, i in zip(users, pos))
    assert not any(int(u) * 8 + int(j) in keys for u, j in zip(users, neg))
    assert (neg[users == 0] == 7).all()  # user 0 has edges to items 0..6: only 7 is a negative
    seen = torch.cat([u * 8 + i for u, i, _ in sampler.epoch(3, gen)])
    assert sorted(seen.tolist()) == sorted(keys)


def test_bpr_loss_matches_its_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    u_out, i_out, u0, i0 = (torch.randn(n, 4, generator=gen) for n in (5, 8, 5, 8))
    users, pos, neg = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7])
    loss, l2 = bpr_loss(u_out, i_out, u0, i0, users, pos, neg, reg=0.1)
    x = (u_out[users] * (i_out[pos] - i_out[neg])).sum(1)
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(x).mean())
    expect = 0.1 * 0.5 * (u0[users].pow(2).sum() + i0[pos].pow(2).sum() + i0[neg].pow(2).sum()) / 3
    torch.testing.assert_close(l2, expect)


def test_central_lightgcn_learns_beyond_popularity(tmp_path: Path) -> None:
    common = ["logger=none", "trainer.enable_progress_bar=false", "eval.every=1000"]
    lgcn, objs = train_mod.train(
        compose(
            [
                *common,
                "experiment=lightgcn_central",
                "fed.rounds=8",
                "model.lr=0.01",
                f"paths.output_dir={tmp_path / 'l'}",
            ]
        )
    )
    pop, _ = train_mod.train(
        compose([*common, "experiment=popularity", f"paths.output_dir={tmp_path / 'p'}"])
    )
    assert lgcn["test/recall@20"] > 1.3 * pop["test/recall@20"]
    dm = objs["datamodule"]
    assert objs["model"].graph.n_edges == dm.train.items.size  # every training edge, on the server
