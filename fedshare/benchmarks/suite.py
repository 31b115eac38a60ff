"""The benchmarks of ``python -m fedshare.bench`` (what each measures: that module's help).

Each is ``fn(cfg, repeats, reference) -> dict`` in `BENCHMARKS`; its figures come from real
runs on real data, never from tests.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules import FederatedDataModule
from fedshare.atomic import write_text
from fedshare.config import ConfigError, compose
from fedshare.federated.rounds import (
    client_round,
    client_round_reference,
    cohort_data,
    fedavg_rows,
    plan_round,
)
from fedshare.run.runtime import peak_rss_mb, tune_allocator

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
    rounds = []
    for r in range(1, repeats + 2):
        rounds.append(model.run_round(r, optimizer))
        log.info(
            "[round] %d/%d: %.2f s%s", r, repeats + 1, rounds[-1]["time/round_s"], " (warm-up)" * (r == 1)
        )
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
    for rep in range(repeats):
        t0 = last = time.perf_counter()
        for lo in range(0, users.numel(), size):
            model._evaluate(users[lo : lo + size], "test", ("train", "valid"), model.test_metrics)
            if time.perf_counter() - last > 10:  # progress on long evaluations
                last = time.perf_counter()
                log.info("[eval] %d: %d/%d users, %.0f s", rep + 1, lo + size, users.numel(), last - t0)
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
            cfg,
            {
                "fed": {"rounds": repeats},
                "eval": {"every": repeats + 1},
                "paths": {"output_dir": f"{tmp}/run"},
            },
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


# ---- scale --------------------------------------------------------------------------------------
# ``python -m fedshare.bench scale``: how rounds and evaluation grow with the data.
#
# At each size of `SIZES` (users and interactions; `ITEMS` items) the generated dataset
# (``data=synthetic`` with those sizes) is measured in its own fresh process, one after the
# other, so that each peak memory is that size's own:
#
# - ``fedshare_round_s``: a whole FedShare round as training runs it (`bench round`);
# - ``fedmf_round_s``: FedMF's vectorized client phase on the same data (`bench round
#   experiment=fedmf`, no per-client reference);
# - ``eval_s``: full-ranking evaluation of every user with test items (`bench eval`).
#
# It writes a table (``scale.md``) and a log-log picture of seconds and peak memory against
# interactions (``scale.png``) into ``docs/`` (``bench.out``) and prints, as its last line, one
# JSON object with every measure and the fitted log-log slopes (1.0: cost linear in the
# interactions).
# (users, interactions): the generated datasets measured, up to the presets synthetic-large
# (100k users x 10M) and synthetic-1m (1M users x 50M); ITEMS items at every size
SIZES = (
    (10_000, 1_000_000),
    (30_000, 3_000_000),
    (100_000, 10_000_000),
    (300_000, 20_000_000),
    (1_000_000, 50_000_000),
)
ITEMS = 100_000
# (key in the result, benchmark, experiment): what is measured at each size
MEASURES = (
    ("fedshare_round", "round", "fedshare"),
    ("fedmf_round", "round", "fedmf"),
    ("eval", "eval", "fedshare"),
)


def size_config(cfg: DictConfig, users: int, interactions: int, experiment: str) -> DictConfig:
    """``experiment`` on the generated dataset of ``users`` users, `ITEMS` items and
    ``interactions`` interactions. FedShare keeps the caller's ``model`` keys (``bench scale model.server_steps=20``
    times the full-graph step at scale); both keep the caller's ``fed``, ``eval`` and ``seed``."""
    base = compose(
        [
            "logger=none",
            f"experiment={experiment}",
            "data=synthetic",
            f"data.synthetic.n_users={users}",
            f"data.synthetic.n_items={ITEMS}",
            f"data.synthetic.n_interactions={interactions}",
        ]
    )
    keys = ("fed", "eval", "seed", "sharing") + (("model",) if experiment == cfg.model.name else ())
    out = OmegaConf.merge(base, {k: cfg[k] for k in keys})
    OmegaConf.set_readonly(out, True)
    return out


def _measure(yaml: str, kind: str, repeats: int) -> dict[str, Any]:
    """One measure in this (fresh) process: ``kind`` is ``round`` or ``eval``."""
    cfg = OmegaConf.create(yaml)
    OmegaConf.set_readonly(cfg, True)
    tune_allocator()
    t0 = time.perf_counter()
    if kind == "round":
        result = bench_round(cfg, repeats, reference=False)
    else:
        result = bench_eval(cfg, 1, reference=False)
    result["process_s"] = time.perf_counter() - t0
    return result


def run_fresh(yaml: str, kind: str, repeats: int) -> dict[str, Any]:
    """`_measure` in a new process (spawned: nothing inherited, its peak memory its own)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure, (yaml, kind, repeats))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` (1.0: linear growth)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else float("nan")


def table(rows: list[dict[str, Any]], slopes: dict[str, float], command: str) -> str:
    lines = [
        "# Scaling: seconds and peak memory against interactions",
        "",
        f"Measured by `{command}` (2 cores, one process per measure, one after the other).",
        f"Generated data (`data=synthetic`, its default knobs but the sizes), {ITEMS:,} items.",
        "",
        "| users | items | interactions (train) | shared edges | FedShare round s | server s | client s "
        "| FedMF round s | eval s | peak GB (FedShare / FedMF / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['shared_edges']:,} "
            f"| {r['fedshare_round_s']:.2f} | {r['fedshare_server_s']:.2f} | {r['fedshare_client_s']:.2f} "
            f"| {r['fedmf_round_s']:.2f} | {r['eval_s']:.2f} | {r['fedshare_round_peak_gb']:.1f} "
            f"/ {r['fedmf_round_peak_gb']:.1f} / {r['eval_peak_gb']:.1f} |"
        )
    lines += ["", "Log-log slopes against interactions (1.0 = linear):", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in slopes.items()]
    lines += ["", "![seconds and peak memory against interactions](scale.png)", ""]
    return "\n".join(lines)


LABELS = {"fedshare_round": "FedShare round", "fedmf_round": "FedMF round", "eval": "evaluation"}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # plotting: only this benchmark

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["interactions"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in LABELS.items():
        ax_t.loglog(x, [r[f"{key}_s"] for r in rows], "o-", label=label)
        ax_m.loglog(x, [r[f"{key}_peak_gb"] for r in rows], "o-", label=label)
    ax_t.set(xlabel="train interactions", ylabel="seconds", title="time")
    ax_m.set(xlabel="train interactions", ylabel="peak memory (GB)", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


SECONDS = {"fedshare_round": "round_s", "fedmf_round": "vectorized_s", "eval": "eval_s"}


def bench_scale(cfg: DictConfig, repeats: int, reference: bool, max_users: int, out: str) -> dict[str, Any]:
    """Every size of `SIZES` up to ``max_users`` (0: all), measured as the module says."""
    sizes = [(u, n) for u, n in SIZES if not max_users or u <= max_users] or [SIZES[0]]
    rows = []
    for users, interactions in sizes:
        row: dict[str, Any] = {"users": users, "items": ITEMS}
        for key, kind, experiment in MEASURES:
            log.info("[scale] %s users: %s ...", f"{users:,}", key)
            t0 = time.perf_counter()
            yaml = OmegaConf.to_yaml(size_config(cfg, users, interactions, experiment))
            result = run_fresh(yaml, kind, max(1, repeats))
            row[f"{key}_s"] = float(result[SECONDS[key]])
            row[f"{key}_peak_gb"] = float(result["peak_rss_mb"]) / 1024
            if key == "fedshare_round":
                row.update(
                    interactions=int(result["interactions"]),
                    fedshare_client_s=float(result["client_s"]),
                    fedshare_server_s=float(result["server_s"]),
                    shared_edges=int(result["shared_edges"]),
                )
            log.info(
                "[scale]   %.2f s, peak %.1f GB (%.0f s with data and setup)",
                row[f"{key}_s"],
                row[f"{key}_peak_gb"],
                time.perf_counter() - t0,
            )
        rows.append(row)
    x = [r["interactions"] for r in rows]
    slopes = {
        f"{key}_{what}": slope(x, [r[f"{key}_{what}"] for r in rows])
        for key in LABELS
        for what in ("s", "peak_gb")
    }
    folder = Path(out)
    command = f"python -m fedshare.bench scale bench.repeats={repeats}"
    command += f" bench.max_users={max_users}" if max_users else ""
    write_text(folder / "scale.md", table(rows, slopes, command))
    plot(rows, folder / "scale.png")
    return {
        "benchmark": "scale",
        "dataset": "synthetic",
        "rows": rows,
        "slopes": slopes,
        "table": str(folder / "scale.md"),
    }


BENCHMARKS = {
    "round": bench_round,
    "eval": bench_eval,
    "propagate": bench_propagate,
    "flower": bench_flower,
    "scale": bench_scale,
}
