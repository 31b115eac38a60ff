"""Results page: ``python -m fedshare.results [--datasets A,B] [--seeds 0,1,2] [-- key=value ...]``.

Trains every method on every dataset with every seed, one ``python -m fedshare.train``
subprocess per run, then writes the page (``docs/RESULTS.md``) and its data beside it
(``docs/RESULTS.json``: the same rows and searches, machine-readable) from the runs'
``metrics.json`` files: no number on the page is typed by hand. A campaign of one dataset that
writes its page elsewhere (``--out /tmp/x.md``) leaves the full page and its data as they were.

Runs go to ``RUNS_ROOT/<dataset>/<method>/seed<N>``, each with its output in ``seed<N>.log`` and
its command, exit status, wall time and machine in ``seed<N>.run.json`` next to the folder.
A run whose folder holds ``metrics.json`` is reused, so a long campaign is continued by running
the same command again. The leftovers of an unfinished attempt (folder without ``metrics.json``,
log) are renamed ``...-incomplete-<time>`` and the run starts over; nothing is deleted.
A failed run is reported and the others go on; the exit status is 1 if any failed.
With ``--tune-trials N`` the campaign first searches FedMF, FedShare and the centralized LightGCN
on each dataset with the same N trials (``python -m fedshare.tune``, on validation, into
``RUNS_ROOT/tune/<dataset>-<experiment>``; a search that used its budget is reused, a killed one
resumed), and each method's runs take its search's best keys (the ablations FedShare's); the
page shows every search's budget, trials and tuned keys.
One campaign per runs root at a time: a second one would take the first one's runs for killed ones.

``--dry-run`` prints what would run; ``--collect-only`` only reads the finished runs.
When the page and the runs root are in the same git work tree, every finished run the page shows
must have files tracked there; otherwise nothing is written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from fedshare.atomic import write_json, write_text
from fedshare.config import available
from fedshare.reporting.records import inside, untracked_records, work_tree
from fedshare.reporting.results_page import (
    DATASETS,
    DEFAULTS,
    METHODS,
    SEEDS,
    K,
    campaign,
    collect,
    plan,
    preflight,
    render,
    results_command,
    searched,
    stale_runs,
    tuned,
)
from fedshare.tuning.campaign import parse_budget, plan_searches, run_searches, search_rows


def parser(labels: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fedshare.results",
        description=__doc__.split("\n\n")[1],
        usage="%(prog)s [options] [-- key=value ...]",
        epilog="After --: overrides passed to every run (e.g. -- fed.rounds=100).",
    )
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (default: %(default)s)"
    )
    p.add_argument(
        "--methods", default=None, help=f"comma-separated labels (default: all): {', '.join(labels)}"
    )
    p.add_argument(
        "--data-root",
        default=DEFAULTS["data_root"],
        help="folder of the dataset folders (default: each dataset config's data.root, $FEDSHARE_DATA, the cache)",
    )
    p.add_argument("--runs-root", default=DEFAULTS["runs_root"], help="where the runs go (%(default)s)")
    p.add_argument("--out", default=DEFAULTS["out"], help="the page (%(default)s)")
    p.add_argument(
        "--tune-trials",
        default=DEFAULTS["tune_trials"],
        help="first search FedMF, FedShare and LightGCN on each dataset with this many trials each "
        "(python -m fedshare.tune, on validation; RUNS_ROOT/tune/<dataset>-<experiment>), then run their "
        "best keys; N for every dataset, or N,DATASET=M,... for a dataset's own budget (the same for "
        "every method there); 0: the configs' defaults (%(default)s)",
    )
    p.add_argument(
        "--valid-ratio",
        type=float,
        default=DEFAULTS["valid_ratio"],
        help="a dataset with train/test files and no validation file gets this share of each user's "
        "train as validation (data.split.valid_ratio), so that its runs select on validation "
        "(%(default)s)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--collect-only", action="store_true", help="only read finished runs; train nothing")
    mode.add_argument(
        "--dry-run", action="store_true", help="print the runs' commands; run and write nothing"
    )
    return p


def record_errors(out: Path, runs_root: Path, collected: dict) -> list[str]:
    """Errors for the finished runs the page would show that git does not track (see
    `fedshare.reporting.records`); checked only when the page and the runs root are in the same
    git work tree (a page written outside a repository is not checked)."""
    top = work_tree(out.parent)
    if top is None or not inside(runs_root, top):
        return []
    folders = [
        run["folder"]
        for rows in collected.values()
        for entry in rows.values()
        for run in entry["runs"].values()
    ]
    return untracked_records(out, folders)


def _split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None, methods: list[tuple[str, list[str]]] | None = None) -> int:
    """``methods``: the catalog that ``--methods`` picks from (default ``METHODS``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    extras: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, extras = args[:at], args[at + 1 :]
    catalog = list(METHODS if methods is None else methods)
    labels = [label for label, _ in catalog]
    try:
        opts = parser(labels).parse_args(args)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return int(stop.code or 0)

    accepted = available("data")
    datasets = _split_list(opts.datasets)
    unknown = [d for d in datasets if d not in accepted]
    if unknown or not datasets:
        print(
            f"error: unknown dataset {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}",
            file=sys.stderr,
        )
        return 2
    picked = labels if opts.methods is None else _split_list(opts.methods)
    unknown = [m for m in picked if m not in labels]
    if unknown or not picked:
        print(
            f"error: unknown method {', '.join(map(repr, unknown))}; accepted (comma-separated): "
            f"{', '.join(labels)}",
            file=sys.stderr,
        )
        return 2
    try:
        seeds = [int(s) for s in _split_list(opts.seeds)]
    except ValueError:
        print(
            f"error: --seeds takes comma-separated integers (e.g. 0,1,2), got {opts.seeds!r}", file=sys.stderr
        )
        return 2
    if not seeds or len(set(seeds)) != len(seeds):
        print(f"error: --seeds needs distinct integers, got {opts.seeds!r}", file=sys.stderr)
        return 2

    try:
        budget = parse_budget(opts.tune_trials, datasets)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not 0 <= opts.valid_ratio < 1:
        print(f"error: --valid-ratio takes a share in [0, 1), got {opts.valid_ratio}", file=sys.stderr)
        return 2
    chosen = [m for m in catalog if m[0] in picked]
    runs_root = Path(opts.runs_root)
    runs = plan(datasets, seeds, chosen, opts.data_root, runs_root, extras, opts.valid_ratio)
    searches = plan_searches(
        datasets, searched(chosen), budget, opts.data_root, runs_root, extras, opts.valid_ratio
    )
    runs = tuned(runs, searches)
    command = results_command(
        datasets,
        seeds,
        None if picked == labels and methods is None else picked,
        opts.data_root,
        opts.runs_root,
        opts.out,
        extras,
        opts.tune_trials,
        opts.valid_ratio,
    )

    problems = preflight(runs, validate=not opts.collect_only, searches=searches)
    if problems:
        print("\n".join(problems) + "\nnothing was run or written", file=sys.stderr)
        return 2
    if searches and not opts.collect_only:  # the equal-budget searches first: the runs take their keys
        failed = run_searches(searches, dry_run=opts.dry_run)
        if failed:
            print("FAILED searches:\n  " + "\n  ".join(failed) + "\nno run was started", file=sys.stderr)
            return 1
        stale = stale_runs(runs)
        if stale:  # a search's new best.yaml: its finished runs trained at other keys
            print("\n".join(stale) + "\nthe searches are done; no run was started", file=sys.stderr)
            return 2

    outcomes = campaign(runs, runs_root, dry_run=opts.dry_run, collect_only=opts.collect_only)
    if outcomes is None:
        return 130
    if opts.dry_run:
        return 0

    collected = collect(runs)
    data_file = Path(opts.out).with_suffix(".json")  # the page's data, beside the page it describes
    errors = record_errors(Path(opts.out), runs_root, collected)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"nothing written to {opts.out} or {data_file}", file=sys.stderr)
        return 2
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    tuning = search_rows(searches)
    page = render(collected, command, generated, opts.runs_root, tuning)
    write_text(Path(opts.out), page)
    payload = {
        "generated": generated,
        "command": command,
        "k": K,
        "std": "sample (ddof=1)",
        "datasets": collected,
        "searches": tuning,
    }
    write_json(data_file, payload)

    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "reused", "failed", "missing")}
    print(
        f"wrote {opts.out} and {data_file} ("
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + ")"
    )
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"FAILED: {len(failed)} of {len(runs)} runs:", file=sys.stderr)
        for o in failed:
            print(f"  {o.run.name}: {o.detail}; log: {o.run.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
