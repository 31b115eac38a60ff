"""Benchmarks: ``python -m fedshare.bench NAME [GROUP=NAME ...] [key=value ...]``.

``round``: one round with every client in the cohort. FedMF (``experiment=fedmf``): the client
phase (negative sampling, shuffling and the local epochs), vectorized and per-client reference
on the same inputs in the same process; also checks that both give the same parameters.
FedShare (the default): whole rounds as training runs them (shares, cohort, client phase with
alignment, FedAvg, server graph step): ``round_s``, ``client_s``, ``server_s``.

``propagate``: LightGCN propagation forward and forward+backward on a Gowalla-sized random
graph, DGL (as the server runs it) against ``torch.sparse``.

``flower``: FedShare rounds on Flower's deployment engine (SuperLink + ``nodes=N`` SuperNodes on
127.0.0.1, ``python -m fedshare.flower``) and in-process with the same ``fed.nodes``:
``flower_round_s`` (median round as the ServerApp waits for it: messages, the nodes' ClientApp
processes, the server's step) and ``inprocess_round_s``.

``eval``: full-ranking evaluation (score all items, mask history, top-K, metrics) of every
user with held-out items, as the test stage runs it: ``eval_s``.

``scale``: FedShare and FedMF rounds and evaluation on generated data of 10k users x 1M
interactions to 1M users x 50M (100k items), each in its own process: a table and a log-log picture of
seconds and peak memory against interactions in ``docs/`` (``bench.out``), with the slopes.
``bench.max_users=N`` stops at N users.

Every benchmark prints a human-readable report and, as its last line, one JSON object.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys

from fedshare.benchmarks.suite import BENCHMARKS, report
from fedshare.config import ConfigError, compose
from fedshare.data.readers import DatasetError
from fedshare.run.runtime import tune_allocator

# The benchmarks' own options (bench.KEY=VALUE) and their defaults; each benchmark takes those
# its function names: repeats (timed repeats), reference (also time the per-client reference),
# max_users (scale: largest size, 0 = all), out (scale: folder of its table and picture).
OPTIONS = {"repeats": 5, "reference": True, "max_users": 0, "out": "docs"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: python -m fedshare.bench {{{','.join(BENCHMARKS)}}} [key=value ...]\n{__doc__}")
        return 2
    name, rest = args[0], args[1:]
    fn = BENCHMARKS[name]
    accepted = [k for k in inspect.signature(fn).parameters if k != "cfg"]
    options = {k: v for k, v in OPTIONS.items() if k in accepted}
    overrides = []
    for arg in rest:  # bench.KEY=VALUE: options of the benchmark itself, not of the run's config
        if arg.startswith("bench."):
            key, _, value = arg[len("bench.") :].partition("=")
            if key not in options:
                print(
                    f"config error: unknown option 'bench.{key}' of the {name} benchmark; accepted: "
                    + ", ".join(f"bench.{k}" for k in options),
                    file=sys.stderr,
                )
                return 2
            default = OPTIONS[key]
            try:
                options[key] = (
                    value.lower() in ("1", "true", "yes")
                    if isinstance(default, bool)
                    else type(default)(value)
                )
            except ValueError:
                print(
                    f"config error: bench.{key}={value!r} is not a {type(default).__name__}", file=sys.stderr
                )
                return 2
        else:
            overrides.append(arg)
    if name == "flower":
        from fedshare.flower.launch import compose_args  # Flower: only this benchmark needs it

        overrides = compose_args(overrides)
    try:
        cfg = compose(["logger=none", *overrides])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    tune_allocator()
    try:
        result = fn(cfg, **options)
    except (DatasetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a Flower launch that failed (fedshare.flower.launch.LaunchError)
        if type(err).__name__ != "LaunchError":
            raise
        print(f"flower error: {err}", file=sys.stderr)
        return 1
    print(report(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
