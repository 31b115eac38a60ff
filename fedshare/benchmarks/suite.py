"""The benchmarks of ``python -m fedshare.bench`` (what each measures: that module's help).

Each is ``fn(cfg, repeats, reference) -> dict`` in `BENCHMARKS`; its figures come from real
runs on real data, never from tests.
"""


from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedshare.config import ConfigError
from fedshare.federated.rounds import (
    client_round,
    client_round_reference,
    cohort_data,
    fedavg_rows,
    plan_round,
)
from fedshare.run.runtime import peak_rss_mb

log = logging.getLogger("fedshare.bench")


def bench_round(cfg, repeats: int, reference: bool) -> dict[str, Any]:
    from fedshare.run.build import build_model  # the model exactly as a training run builds it

    if cfg.model.name == "fedshare":
        return bench_fedshare_round(cfg, repeats)
    if cfg.model.name != "fedmf":
        raise ConfigError(
            f"the round benchmark times FedMF or FedShare rounds; model.name={cfg.model.name!r} "
            "(use experiment=fedmf or experiment=fedshare)"
        )
    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup()
    m = cfg.model
    model = build_model(cfg, dm)
    clients, server = model.clients, model.server
    users = torch.arange(dm.n_users)  # every client in the cohort
    data = cohort_data(users, clients.train_indptr, clients.train_items)
    user_emb, item_emb, gen = clients.user_emb, server.item_emb, clients.round_gen

    def client_phase(fn: Callable, plan=None):
        t0 = time.perf_counter()
        plan = plan if plan is not None else plan_round(data, dm.n_items, m.local_epochs, gen)
        out = fn(user_emb[users], item_emb, data, plan, m.lr, m.reg, m.batch_size)
        return time.perf_counter() - t0, plan, out

    client_phase(client_round)  # warm-up: first-touch allocations and lazy inits
    times, last = [], None
    for _ in range(repeats):
        seconds, plan, out = client_phase(client_round)
        times.append(seconds)
        last = (plan, out)
    result: dict[str, Any] = {
        "benchmark": "round",
        "dataset": cfg.data.name,
        "clients": data.n_clients,
        "interactions": int(data.items.numel()),
        "local_epochs": int(m.local_epochs),
        "dim": int(m.dim),
        "batch_size": int(m.batch_size),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "vectorized_s": statistics.median(times),
        "vectorized_all_s": [round(t, 4) for t in times],
        "vectorized_peak_rss_mb": peak_rss_mb(),
    }
    if reference:
        plan, (rows, upload, _) = last
        ref_seconds, _, (ref_rows, ref_upload, _) = client_phase(client_round_reference, plan)
        q = fedavg_rows(item_emb, upload, m.server_lr)
        ref_q = fedavg_rows(item_emb, ref_upload, m.server_lr)
        result.update(
            {
                "reference_s": ref_seconds,
                "speedup": ref_seconds / result["vectorized_s"],
                "max_abs_diff_user_rows": float((rows - ref_rows).abs().max()),
                "max_abs_diff_item_table": float((q - ref_q).abs().max()),
            }
        )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _setup(cfg):
    from fedshare.run.build import build_model  # the model exactly as a training run builds it

    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup()
    return dm, build_model(cfg, dm)


def bench_fedshare_round(cfg, repeats: int) -> dict[str, Any]:
    """Whole FedShare rounds 1..repeats+1 (the first one, which also fills the graph, is warm-up)."""
    if cfg.fed.cohort_fraction != 1.0:
        log.warning("fed.cohort_fraction=%s: the benchmark times partial cohorts", cfg.fed.cohort_fraction)
    dm, model = _setup(cfg)
    optimizer = model.configure_optimizers()
    rounds = [model.run_round(r, optimizer) for r in range(1, repeats + 2)]
    timed = rounds[1:]
    m = cfg.model
    return {
        "benchmark": "round",
        "model": "fedshare",
        "dataset": cfg.data.name,
        "clients": int(timed[-1]["train/cohort"]),
        "sharing_clients": int(timed[-1]["train/sharing_cohort"]),
        "shared_edges": int(timed[-1]["graph/edges"]),
        "interactions": int(dm.train.items.size),
        "local_epochs": int(m.local_epochs),
        "dim": int(m.dim),
        "layers": int(m.layers) if m.use_graph else 0,
        "server_steps": int(m.server_steps),
        "server_batch": int(m.server_batch),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "round_s": statistics.median(r["time/round_s"] for r in timed),
        "client_s": statistics.median(r["time/client_s"] for r in timed),
        "server_s": statistics.median(r["time/server_s"] for r in timed),
        "round_all_s": [round(r["time/round_s"], 4) for r in timed],
        "warmup_round_s": rounds[0]["time/round_s"],
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_eval(cfg, repeats: int, reference: bool) -> dict[str, Any]:
    """The test stage's evaluation of every user with test items (the untrained model scores)."""
    dm, model = _setup(cfg)
    if hasattr(model, "run_round"):  # one round first: FedShare's fused ranking needs the graph views
        model.run_round(1, model.configure_optimizers())
    if hasattr(model, "_refresh"):
        model._refresh()
    users = torch.from_numpy(dm.test.degrees.nonzero()[0])
    size = int(cfg.eval.batch_users)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, users.numel(), size):
            model._evaluate(users[lo : lo + size], "test", ("train", "valid"), model.test_metrics)
        values = model.test_metrics.compute()
        model.test_metrics.reset()
        times.append(time.perf_counter() - t0)
    return {
        "benchmark": "eval",
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "users": int(users.numel()),
        "items": dm.n_items,
        "batch_users": size,
        "ks": list(cfg.eval.ks),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "eval_s": statistics.median(times),
        "eval_all_s": [round(t, 4) for t in times],
        f"recall@{max(cfg.eval.ks)}": float(values[f"recall@{max(cfg.eval.ks)}"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['benchmark']} on {result['dataset']}:"]
    for key, value in result.items():
        if key in ("benchmark", "dataset"):
            continue
        lines.append(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    return "\n".join(lines)


def bench_propagate(cfg, repeats: int, reference: bool) -> dict[str, Any]:
    """LightGCN propagation (3 layers, d=64) on a random graph of Gowalla's size: DGL vs torch.sparse."""
    from fedshare.graph.shared_graph import bench_propagate as run  # DGL: only this benchmark needs it

    return {"benchmark": "propagate", "dataset": "random, Gowalla-sized", **run(repeats=repeats)}


def bench_flower(cfg, repeats: int, reference: bool) -> dict[str, Any]:
    """``repeats`` rounds on Flower (no validation), then the same rounds in-process."""
    from fedshare.flower.launch import launch  # Flower: only this benchmark needs it

    if cfg.model.name != "fedshare":
        raise ConfigError(f"bench flower runs model=fedshare; got model={cfg.model.name}")
    with tempfile.TemporaryDirectory(prefix="fedshare-bench-flower-") as tmp:
        run = OmegaConf.merge(
            cfg, {"fed": {"rounds": repeats}, "eval": {"every": repeats + 1}, "paths": {"output_dir": f"{tmp}/run"}}
        )
        OmegaConf.set_readonly(run, True)
        t0 = time.perf_counter()
        metrics = launch(run)
        total = time.perf_counter() - t0
        flower = json.loads((Path(tmp) / "run" / "flower" / "rounds.json").read_text())["round_s"]
    inproc = bench_fedshare_round(cfg, repeats)
    k = max(cfg.eval.ks)
    return {
        "benchmark": "flower",
        "model": "fedshare",
        "dataset": cfg.data.name,
        "nodes": int(cfg.fed.nodes),
        "clients": inproc["clients"],
        "rounds": repeats,
        "flower_round_s": statistics.median(flower),
        "flower_round_all_s": [round(t, 3) for t in flower],
        "flower_total_s": total,
        f"flower_test_recall@{k}": metrics[f"test/recall@{k}"],
        "inprocess_round_s": inproc["round_s"],
        "inprocess_round_all_s": inproc["round_all_s"],
        "threads": torch.get_num_threads(),
    }


BENCHMARKS = {"round": bench_round, "eval": bench_eval, "propagate": bench_propagate, "flower": bench_flower}
