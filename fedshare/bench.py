"""Benchmarks: ``python -m fedshare.bench NAME [GROUP=NAME ...] [key=value ...]``.

``round``: the client phase of one FedMF round with every client in the cohort (negative
sampling, shuffling and the local epochs), vectorized and per-client reference on the same
inputs in the same process; also checks that both give the same parameters.

Every benchmark prints a human-readable report and, as its last line, one JSON object.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from datamodules import FederatedDataModule
from fedshare.config import ConfigError, compose
from fedshare.federation import client_round, client_round_reference, cohort_data, fedavg_rows, plan_round
from fedshare.readers import DatasetError
from fedshare.runtime import peak_rss_mb, tune_allocator

log = logging.getLogger("fedshare.bench")


def bench_round(cfg, repeats: int = 5, reference: bool = True) -> dict[str, Any]:
    from fedshare.train import build_model  # the model exactly as a training run builds it

    if cfg.model.name != "fedmf":
        raise ConfigError(f"the round benchmark times FedMF rounds; model.name={cfg.model.name!r}")
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


def _report(result: dict[str, Any]) -> str:
    lines = [f"{result['benchmark']} on {result['dataset']}:"]
    for key, value in result.items():
        if key in ("benchmark", "dataset"):
            continue
        lines.append(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    return "\n".join(lines)


BENCHMARKS = {"round": bench_round}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: python -m fedshare.bench {{{','.join(BENCHMARKS)}}} [key=value ...]\n{__doc__}")
        return 2
    name, rest = args[0], args[1:]
    options = {"repeats": 5, "reference": True}
    overrides = []
    for arg in rest:  # bench.repeats=N / bench.reference=false are options of the benchmark itself
        if arg.startswith("bench."):
            key, _, value = arg[len("bench.") :].partition("=")
            if key not in options:
                print(
                    f"config error: unknown benchmark option 'bench.{key}'; accepted: "
                    + ", ".join(f"bench.{k}" for k in options),
                    file=sys.stderr,
                )
                return 2
            options[key] = value.lower() in ("1", "true", "yes") if key == "reference" else int(value)
        else:
            overrides.append(arg)
    try:
        cfg = compose(["logger=none", *overrides])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    tune_allocator()
    try:
        result = BENCHMARKS[name](cfg, **options)
    except (DatasetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_report(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
