"""The results page (``docs/RESULTS.md``): the campaign's plan, its runs, and the page from their metrics.

What runs where and how a campaign is continued: ``python -m fedshare.results --help``
(`fedshare.results`, the entry point). No number on the page is typed by hand.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from fedshare.atomic import write_json
from fedshare.config import ConfigError, compose, flat
from fedshare.data.sharing import GROUP_NAMES
from fedshare.tuning.campaign import NOTE, RUN_FLAGS, Search, data_args, place_only, read_json, tail

# (label, overrides) in the page's order; the label's slug names the runs' folder
METHODS: list[tuple[str, list[str]]] = [
    ("popularity", ["experiment=popularity"]),
    ("FedMF", ["experiment=fedmf"]),
    ("FedShare", ["experiment=fedshare"]),
    ("FedShare w/o alignment", ["experiment=fedshare", "model.lambda_cl=0"]),
    ("FedShare w/o graph", ["experiment=fedshare", "model.use_graph=false"]),
    ("FedShare w/o fusion", ["experiment=fedshare", "model.beta=0"]),
    # up to 1000 epochs, stopped early on validation (eval.patience in its experiment)
    ("LightGCN (centralized)", ["experiment=lightgcn_central"]),
]
# the search (`python -m fedshare.tune`) whose best keys a method's runs take with --tune-trials;
# the ablations run at FedShare's tuned config
TUNED_BY: dict[str, str] = {
    "FedMF": "fedmf",
    "FedShare": "fedshare",
    "FedShare w/o alignment": "fedshare",
    "FedShare w/o graph": "fedshare",
    "FedShare w/o fusion": "fedshare",
    "LightGCN (centralized)": "lightgcn_central",
}
DATASETS = ["ml-100k", "ml-1m"]
SEEDS = [0, 1, 2]
K = 20
# a dataset's record that is not a protocol row, named under its table (dataset -> (folder, what))
SEPARATE_RECORDS = {
    "gowalla": (
        "docs/runs/gowalla-lightgcn-cpu-e20",
        "the paper-comparable reproduction of centralized LightGCN on Gowalla's own train/test files, "
        "with no validation split: a test-only learning curve (`eval.curve=true`), nothing selected on it; "
        "its command and numbers are in the README",
    )
}
GROUP_TABLE = ["FedMF", "FedShare"]  # rows of the per-sharing-group table
GAIN = ("FedShare", "FedMF")  # relative gain of the first over the second in mean Recall@K
DEFAULTS = {
    "data_root": None,  # the dataset config's own default: data.root, else $FEDSHARE_DATA, else the cache
    "runs_root": "runs/results",
    "out": "docs/RESULTS.md",
    "tune_trials": "0",  # --tune-trials: 0 runs the configs' defaults (no search); N,dataset=M per dataset
    # a dataset with its own train/test files and no validation file gets this share of each
    # user's train carved out as validation (data.split.valid_ratio, seeded), so that every
    # protocol run selects on validation; the paper-comparable test-only curve is its own record
    "valid_ratio": 0.1,
}


def slug(label: str) -> str:
    """Folder name of a method: ``FedShare w/o graph`` -> ``fedshare-wo-graph``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace("w/o", "wo")).strip("-")


@dataclass
class Run:
    dataset: str
    label: str
    seed: int
    overrides: list[str]  # what decides the numbers: method, data, seed, extra overrides
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.log")

    @property
    def record(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.run.json")

    @property
    def args(self) -> list[str]:
        """Arguments of ``python -m fedshare.train`` for this run."""
        return [*self.overrides, f"paths.output_dir={self.folder}", *RUN_FLAGS]

    @property
    def name(self) -> str:
        return f"{self.dataset} {self.label} seed {self.seed}"


def searched(methods: list[tuple[str, list[str]]]) -> list[str]:
    """The searches (experiments) whose best keys the ``methods``' runs take, in their order."""
    return list(dict.fromkeys(TUNED_BY[label] for label, _ in methods if label in TUNED_BY))


def tuned(runs: list[Run], searches: list[Search]) -> list[Run]:
    """Each run of a tuned method with its search's best keys (``overlay=.../best.yaml``)."""
    by = {(s.dataset, s.experiment): s for s in searches}
    for run in runs:
        search = by.get((run.dataset, TUNED_BY.get(run.label, "")))
        if search is not None:
            run.overrides.append(f"overlay={search.overlay}")  # before an ablation's key=value: it wins
    return runs


@dataclass
class Outcome:
    """What became of a run in this invocation."""

    run: Run
    status: str  # reused | trained | failed | missing
    detail: str = ""


def plan(
    datasets: list[str],
    seeds: list[int],
    methods: list[tuple[str, list[str]]],
    data_root: str | None,
    runs_root: Path,
    extras: list[str],
    valid_ratio: float = DEFAULTS["valid_ratio"],
) -> list[Run]:
    """Every run of the campaign, dataset by dataset, method by method, seed by seed."""
    slugs = [slug(label) for label, _ in methods]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"two methods share a folder name: {sorted(slugs)}")
    runs = []
    for dataset in datasets:
        data = data_args(dataset, data_root, valid_ratio)
        for (label, overrides), name in zip(methods, slugs):
            for seed in seeds:
                runs.append(
                    Run(
                        dataset,
                        label,
                        seed,
                        [*overrides, *data, f"seed={seed}", *extras],
                        runs_root / dataset / name / f"seed{seed}",
                    )
                )
    return runs


def train_command(overrides: list[str], seeds: list[int] | None = None) -> str:
    """``python -m fedshare.train ...``; with ``seeds``, the seed shows as ``seed={0,1,2}``."""
    parts = ["python -m fedshare.train"]
    for arg in overrides:
        if seeds is not None and arg.startswith("seed="):
            parts.append(
                "seed=" + (str(seeds[0]) if len(seeds) == 1 else "{" + ",".join(map(str, seeds)) + "}")
            )
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


def machine() -> str:
    import torch  # torch only to name the machine: the campaign itself runs in subprocesses

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )


def _comparable(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not place_only(o.partition("=")[0])]


def conflict(run: Run) -> str | None:
    """Why the finished run in ``run.folder`` is not the one asked for, or None: another command,
    or a config (its ``config.yaml``) other than what its keys compose to now, say a search's
    ``best.yaml`` or a YAML default that changed since it ran. Keys the run's config does not
    hold (added to the YAML since, with a default that keeps the old behaviour) are not compared."""
    record = read_json(run.record)
    if not record or "overrides" not in record:
        return None  # made by hand or by an older script: nothing to compare
    if _comparable(record["overrides"]) != _comparable(run.overrides):
        return (
            f"{run.folder} holds a run of `{train_command(record['overrides'])}`, not of "
            f"`{train_command(run.overrides)}`; move it away or choose another --runs-root"
        )
    saved = run.folder / "config.yaml"
    if not saved.is_file():
        return None
    try:
        new = flat(OmegaConf.to_container(compose(run.args), resolve=True))
    except ConfigError:  # its search has not written its best.yaml yet: compared once it has
        return None
    old = flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new)) if not place_only(k) and old[k] != new[k]]
    if changed:
        return (
            f"{run.folder} trained with another config than `{train_command(run.overrides)}` composes now "
            f"({'; '.join(changed[:5])}); move it away to train it again"
        )
    return None


def state(run: Run) -> str:
    """finished | leftovers (of an unfinished attempt) | new."""
    if (run.folder / "metrics.json").is_file():
        return "finished"
    if run.folder.exists() or run.log.exists() or run.record.exists():
        return "leftovers"
    return "new"


def move_aside(run: Run) -> list[tuple[Path, Path]]:
    """Rename what an unfinished attempt left (folder, log, record) to ``...-incomplete-<time>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base, n = f"{run.folder.name}-incomplete-{stamp}", 1
    while any(run.folder.with_name(base + s).exists() for s in ("", ".log", ".run.json")):
        base, n = f"{run.folder.name}-incomplete-{stamp}-{n}", n + 1
    moved = []
    for old, suffix in ((run.folder, ""), (run.log, ".log"), (run.record, ".run.json")):
        if old.exists():
            new = run.folder.with_name(base + suffix)
            old.rename(new)
            moved.append((old, new))
    return moved


def execute(run: Run) -> Outcome:
    """One run as a subprocess, its output into ``run.log``, its record into ``run.record``."""
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "fedshare.train", *run.args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log fills as the run goes (tail -f)
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    with open(run.log, "w") as log:
        log.write(f"# {train_command(run.args)}\n# started {started.isoformat(timespec='seconds')}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the run got the Ctrl-C too; let it stop, then stop the campaign
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    record = {
        "overrides": run.overrides,
        "command": train_command(run.args),
        "returncode": code,
        "wall_s": round(wall, 3),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
    }
    write_json(run.record, record)
    if code != 0:
        return Outcome(run, "failed", f"exit {code} after {wall:.1f} s")
    if not (run.folder / "metrics.json").is_file():
        return Outcome(run, "failed", f"exit 0 but no metrics.json after {wall:.1f} s")
    return Outcome(run, "trained", f"{wall:.1f} s")


def preflight(runs: list[Run], validate: bool = True, searches: list[Search] = ()) -> list[str]:
    """What must stop the campaign before it starts: a config error, a finished run of another
    command, a search folder that holds another search."""
    problems = []
    for search in searches:
        if (search.folder / "search.yaml").is_file():
            try:
                search.check_folder()
            except ConfigError as err:
                problems.append(f"{search.name}: {err}")
    if validate:  # a typo must not cost one failed run per command
        seen = set()
        for run in runs:
            if (run.dataset, run.label) in seen:  # seeds differ only in seed=N
                continue
            seen.add((run.dataset, run.label))
            try:  # a search's overlay may not exist yet: the run's own keys are checked
                compose([a for a in run.args if not a.startswith("overlay=")])
            except ConfigError as err:
                problems.append(f"config error ({run.dataset}, {run.label}): {err}")
    return problems + stale_runs(runs)


def stale_runs(runs: list[Run]) -> list[str]:
    """Each finished run that is not the one asked for (`conflict`), with why."""
    return [f"{run.name}: {why}" for run in runs if state(run) == "finished" and (why := conflict(run))]


def campaign(
    runs: list[Run], runs_root: Path, dry_run: bool = False, collect_only: bool = False
) -> list[Outcome] | None:
    """Train what is missing (or, with ``dry_run``, say what would run); None if interrupted."""
    outcomes = []
    if not dry_run and not collect_only:
        print(f"{len(runs)} runs in {runs_root}; each one's output: <dataset>/<method>/seed<N>.log")
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.name}"
        st = state(run)
        if st == "finished":
            outcomes.append(Outcome(run, "reused"))
            print(f"{head} ... reused ({run.folder / 'metrics.json'})")
            continue
        if collect_only:
            outcomes.append(Outcome(run, "missing"))
            print(f"{head} ... missing (no {run.folder / 'metrics.json'})")
            continue
        if dry_run:
            aside = " (after moving an unfinished attempt aside)" if st == "leftovers" else ""
            print(f"{head} would run{aside}: {train_command(run.args)}")
            continue
        if st == "leftovers":
            moved = move_aside(run)
            print(
                f"{head}: moved an unfinished attempt aside: "
                + ", ".join(f"{old.name} -> {new.name}" for old, new in moved)
                + f" (in {run.folder.parent})"
            )
        print(f"{head} ... ", end="", flush=True)
        try:
            outcome = execute(run)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted during {run.name}; run the same command again to continue "
                "(finished runs are reused)",
                file=sys.stderr,
            )
            return None
        outcomes.append(outcome)
        if outcome.status == "trained":
            print(outcome.detail, flush=True)
        else:
            print(f"FAILED ({outcome.detail}); last lines of {run.log}:", flush=True)
            for line in tail(run.log):
                print(f"    {line}")
    return outcomes


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; None with fewer than 2 values)."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def collect(runs: list[Run]) -> dict[str, Any]:
    """Finished runs' metrics and records, by dataset and method, with a summary of every metric."""
    out: dict[str, Any] = {}
    for run in runs:
        entry = out.setdefault(run.dataset, {}).setdefault(
            run.label,
            {
                "command": train_command(run.overrides, [r.seed for r in runs if _same_row(r, run)]),
                "folder": str(run.folder.parent),
                "seeds": [],
                "runs": {},
            },
        )
        entry["seeds"].append(run.seed)
        metrics = read_json(run.folder / "metrics.json")
        if metrics is None:
            continue
        record = read_json(run.record) or {}
        entry["runs"][str(run.seed)] = {
            "folder": str(run.folder),
            "metrics": metrics,
            "max_rounds": _max_rounds(run.folder),
            "wall_s": record.get("wall_s") if record.get("returncode") == 0 else None,
            "machine": record.get("machine") if record.get("returncode") == 0 else None,
        }
    for rows in out.values():
        for entry in rows.values():
            keys = sorted({k for r in entry["runs"].values() for k in r["metrics"]})
            entry["summary"] = {
                k: summarize([r["metrics"][k] for r in entry["runs"].values() if k in r["metrics"]])
                for k in keys
            }
            walls = [r["wall_s"] for r in entry["runs"].values() if r["wall_s"] is not None]
            entry["wall_s"] = {
                **summarize(walls),
                "min": min(walls, default=None),
                "max": max(walls, default=None),
            }
    return out


def _max_rounds(folder: Path) -> int | None:
    """The run's cap on rounds (``fed.rounds`` of its ``config.yaml``); None if not recorded, or
    for a model that trains nothing (popularity: one counting pass, nothing selected)."""
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or (cfg.get("model") or {}).get("name") == "popularity":
        return None
    rounds = (cfg.get("fed") or {}).get("rounds")
    return rounds if isinstance(rounds, int) else None


def fmt_rounds(entry: dict[str, Any]) -> str:
    """Each seed's selected round and the cap it trained under, flagged where the cap bound (the
    selected round is the last allowed: the run might have gone on improving)."""
    runs = [entry["runs"][k] for k in sorted(entry["runs"], key=int)]
    best = [r["metrics"].get("best_round") for r in runs]
    caps = {r.get("max_rounds") for r in runs}
    if not runs or any(b is None for b in best) or caps == {None}:
        return "—"
    text = ", ".join(str(int(b)) for b in best)
    if len(caps) == 1 and None not in caps:
        text += f" (≤{caps.pop()})"
    bound = sum(r.get("max_rounds") is not None and int(b) >= r["max_rounds"] for b, r in zip(best, runs))
    return text + (f", **{bound} at the cap**" if bound else "")


def _same_row(a: Run, b: Run) -> bool:
    return a.dataset == b.dataset and a.label == b.label


def fmt_mean_std(s: dict[str, Any] | None, n_row: int | None = None) -> str:
    if not s or not s["n"]:
        return "—"
    text = f"{s['mean']:.4f} ±n/a" if s["std"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
    return text if n_row is None or s["n"] == n_row else f"{text} (n={s['n']})"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_wall(wall: dict[str, Any]) -> str:
    """Mean, and the range where runs differ: a shared machine now and then runs a process slower."""
    if wall["n"] < 2:
        return fmt_seconds(wall["mean"])
    return f"{fmt_seconds(wall['mean'])} ({fmt_seconds(wall['min'])} to {fmt_seconds(wall['max'])})"


def fmt_seeds(entry: dict[str, Any]) -> str:
    asked = entry["seeds"]
    missing = [str(s) for s in asked if str(s) not in entry["runs"]]
    if not missing:
        return f"n={len(asked)}"
    seeds = "seeds" if len(missing) > 1 else "seed"
    return f"n={len(asked) - len(missing)} of {len(asked)} (missing {seeds} {', '.join(missing)})"


def paired_t(new: dict[str, Any], old: dict[str, Any], key: str) -> dict[str, Any] | None:
    """Paired t-test over the seeds both rows finished (the same seed: the same split, sharing
    draw and requests): differences, mean, t, degrees of freedom, two-sided p; None below 2 seeds."""
    seeds = sorted(set(new["runs"]) & set(old["runs"]), key=int)
    diffs = [
        new["runs"][s]["metrics"][key] - old["runs"][s]["metrics"][key]
        for s in seeds
        if key in new["runs"][s]["metrics"] and key in old["runs"][s]["metrics"]
    ]
    if len(diffs) < 2:
        return None
    mean, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
    if sd == 0:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        from scipy.stats import t as student  # only the page needs it

        t = mean / (sd / math.sqrt(n))
        p = float(2 * student.sf(abs(t), n - 1))
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "t": t, "df": n - 1, "p": p}


ALPHA = 0.05  # a paired difference with two-sided p below this is called significant on the page


def gain_line(rows: dict[str, Any]) -> str:
    new, old = GAIN
    key = f"test/recall@{K}"
    a, b = (rows.get(m, {}).get("summary", {}).get(key) for m in (new, old))
    if not a or not b:
        absent = " and ".join(m for m, s in ((new, a), (old, b)) if not s)
        return f"{new} over {old}: n/a (no finished {absent} run)."
    if b["mean"] == 0:
        return f"{new} over {old}: n/a ({old}'s mean Recall@{K} is 0)."
    gain = (a["mean"] - b["mean"]) / b["mean"]
    note = "" if a["n"] == b["n"] else f" ({new} n={a['n']}, {old} n={b['n']}: not the same seeds)"
    line = (
        f"{new} over {old}: mean Recall@{K} {a['mean']:.4f} vs {b['mean']:.4f}, "
        f"relative gain **{gain:+.2%}**{note}."
    )
    test = paired_t(rows[new], rows[old], key)
    if test is None:
        return line + " Paired t-test: n/a (fewer than 2 seeds finished by both)."
    verdict = (
        f"**significant** (p < {ALPHA})" if test["p"] < ALPHA else f"**within noise** (p >= {ALPHA})"
    )
    return line + (
        f" Paired over seeds {', '.join(test['seeds'])}: differences "
        + ", ".join(f"{d:+.4f}" for d in test["diffs"])
        + f" (mean {test['mean']:+.4f}, sd {test['sd']:.4f}), t = {test['t']:.2f} with {test['df']} "
        f"degrees of freedom, two-sided p = {test['p']:.3f}: {verdict}."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(
    collected: dict[str, Any],
    command: str,
    generated: str,
    runs_root: str,
    searches: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    machines: dict[str, int] = {}
    for rows in collected.values():
        for entry in rows.values():
            for r in entry["runs"].values():
                desc = r["machine"] or "not recorded"
                machines[desc] = machines.get(desc, 0) + 1
    lines = [
        "# Results",
        "",
        f"Generated {generated} by `python -m fedshare.results` from the runs' `metrics.json` files; "
        "no number on this page is typed by hand. To regenerate it (finished runs are reused, missing "
        "ones are trained; add `--collect-only` to only re-read the runs):",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    if len(machines) == 1:
        lines.append(f"Machine: {next(iter(machines))}.")
    else:
        lines.append("Machines:")
        lines += [f"- {desc} ({n} runs)" for desc, n in machines.items()] or ["- none (no finished run)"]
    lines += [
        "",
        f"Test split, full ranking over all items, K = {K}. Each number is the mean ± the sample "
        "standard deviation (ddof=1) over seeds; `±n/a` where one seed finished. Wall time: mean per "
        "run (and range) of the whole `python -m fedshare.train` process: start-up, data, training, test. "
        f"Each run also got `paths.output_dir={runs_root}/<dataset>/<method>/seed<N> "
        f"{' '.join(RUN_FLAGS)}`; its output is in `seed<N>.log` next to that folder. Every run tests "
        "the model of its best validated round (`eval.monitor`); a dataset without a validation file "
        "gets one carved from train (`data.split.valid_ratio`, in its command); the selected round of each "
        "seed is given with the cap it trained under (`fed.rounds`), flagged where it is the cap. The gain of FedShare "
        f"over FedMF comes with a paired t-test over seeds (two-sided; significant below p = {ALPHA}).",
    ]
    metric_r, metric_n = f"test/recall@{K}", f"test/ndcg@{K}"
    lines += ["", *overview_lines(collected)]
    for dataset, rows in collected.items():
        if not any(entry["runs"] for entry in rows.values()):
            lines += ["", *not_run_lines(dataset, rows, (searches or {}).get(dataset, []))]
            continue
        lines += [
            "",
            f"## {dataset}",
            "",
            f"| method | Recall@{K} | NDCG@{K} | seeds | selected round (cap) | wall time per run | command |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, entry in rows.items():
            n = len(entry["runs"])
            lines.append(
                f"| {label} | {fmt_mean_std(entry['summary'].get(metric_r), n)} | "
                f"{fmt_mean_std(entry['summary'].get(metric_n), n)} | {fmt_seeds(entry)} | "
                f"{fmt_rounds(entry)} | {fmt_wall(entry['wall_s'])} | `{_cell(unrun_overlays(entry['command']))}` |"
            )
        if dataset in SEPARATE_RECORDS:
            folder, what = SEPARATE_RECORDS[dataset]
            lines += ["", f"Not a row of this table: `{folder}`, {what}."]
        if searches and searches.get(dataset):
            lines += ["", *tuning_lines(dataset, searches[dataset])]
        shown = [m for m in GROUP_TABLE if m in rows]
        if not shown:
            continue
        lines += [
            "",
            f"### {dataset}: Recall@{K} by sharing group",
            "",
            "Test users grouped by the share of their training interactions they share with the server "
            "(`share=0`: nothing, `share=1`: everything), as drawn in each run. FedMF uses no shared "
            "data; it is here for comparison.",
            "",
            "| method | " + " | ".join(f"share={g}" for g in GROUP_NAMES) + " |",
            "|---" * (len(GROUP_NAMES) + 1) + "|",
        ]
        for label in shown:
            entry = rows[label]
            n = len(entry["runs"])
            cells = [fmt_mean_std(entry["summary"].get(f"{metric_r}/share={g}"), n) for g in GROUP_NAMES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if GAIN[0] in rows or GAIN[1] in rows:
            lines += ["", gain_line(rows)]
    return "\n".join(lines) + "\n"


UNRUN_OVERLAY = re.compile(r"overlay=(\S*/tune/([^/\s]+)/best\.yaml)")


def unrun_overlays(command: str) -> str:
    """A command whose search has not ended names its overlay (``<best.yaml of search X>``) rather
    than linking a file that is not there yet."""
    return UNRUN_OVERLAY.sub(
        lambda m: m.group(0) if Path(m.group(1)).is_file() else f"overlay=<best.yaml of search {m.group(2)}>",
        command,
    )


def not_run_lines(dataset: str, rows: dict[str, Any], searches: list[dict[str, Any]]) -> list[str]:
    """A dataset of the campaign with no finished run yet: what it will run, no empty tables."""
    budget = {row["budget"] for row in searches}
    started = [
        f"`{row['experiment']}` {row['trials'].get('complete', 0) + row['trials'].get('pruned', 0)} of "
        f"{row.get('own_trials', row['budget'])}"
        for row in searches
        if row["trials"]
    ]
    lines = [
        f"## {dataset}",
        "",
        f"**Not run yet**: no run of its {len(rows)} rows has finished. The command at the top trains them"
        + (f" after its searches ({budget.pop()} trials for every searched method)" if len(budget) == 1 else "")
        + (f"; searches begun: {', '.join(started)} trials" if started else "")
        + ". Its rows' commands:",
        "",
    ]
    # a search that has not ended has no best.yaml yet: its overlay is named, not linked
    for label, entry in rows.items():
        command = unrun_overlays(entry["command"])
        lines.append(f"- {label}: `{_cell(command)}`")
    return lines


def overview_lines(collected: dict[str, Any]) -> list[str]:
    """One line per dataset: FedShare and FedMF, the gain, and whether it is beyond the noise."""
    new, old = GAIN
    key = f"test/recall@{K}"
    lines = [
        "## Overview",
        "",
        f"Test Recall@{K}, mean ± std over seeds; the paired t-test is over the seeds both finished.",
        "",
        f"| dataset | {old} | {new} | gain | paired t-test |",
        "|---|---|---|---|---|",
    ]
    for dataset, rows in collected.items():
        if not any(entry["runs"] for entry in rows.values()):
            lines.append(f"| {dataset} | not run yet | | | |")
            continue
        a, b = (rows.get(m, {}).get("summary", {}).get(key) for m in (new, old))
        cells = [fmt_mean_std(b), fmt_mean_std(a)]
        if a and b and a["n"] and b["n"] and b["mean"]:
            cells.append(f"{(a['mean'] - b['mean']) / b['mean']:+.2%}")
        else:
            cells.append("n/a")
        test = paired_t(rows[new], rows[old], key) if new in rows and old in rows else None
        if test is None:
            cells.append("n/a (fewer than 2 paired seeds)")
        else:
            verdict = "significant" if test["p"] < ALPHA else "within noise"
            cells.append(f"t = {test['t']:.2f}, p = {test['p']:.3f} ({len(test['seeds'])} seeds): {verdict}")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return lines


def _keys(params: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in params.items())


def _base_file(folder: str) -> str:
    """A staged search's ``base.yaml``, named only once written: a page names no missing file."""
    path = Path(folder) / "base.yaml"
    return f"`{path}`" if path.is_file() else "its `base.yaml`, written when it starts"


def tuning_lines(dataset: str, rows: list[dict[str, Any]]) -> list[str]:
    """The equal-budget searches of a dataset: budget, trials, best validation, tuned keys."""
    staged = [row for row in rows if row.get("base")]
    lines = [
        f"### {dataset}: tuning (the same budget for every searched method)",
        "",
        "Each method's knobs were searched on the validation split with `python -m fedshare.tune` "
        "(Optuna TPE, median pruning on the validation curve; spaces in `configs/tune/`), and its rows "
        "above run the best trial's keys (`overlay=<search>/best.yaml`; the ablations at FedShare's). "
        "No test metric was read to choose.",
    ]
    for row in staged:
        lines.append("")
        lines.append(
            f"`{row['experiment']}`'s search is staged: its trials train at the best of the first "
            f"{row['base_trials']} trials of `{row['base']}`'s search ({_base_file(row['folder'])}) and search "
            f"only the knobs `{row['base']}`'s does not, with the other {row['own_trials']} trials; its config "
            f"is so chosen among {row['budget']} trials, like every method's here: that best trial of "
            f"`{row['base']}`'s is one of its candidates, as `{row['experiment']}` with its own parts off "
            f"(`as_base` in `configs/tune/{row['experiment']}.yaml`), which is `{row['base']}`'s model."
        )
        candidate = row.get("base_candidate")
        if candidate and candidate.get("chosen"):
            lines.append("")
            lines.append(
                f"**No trial of `{row['experiment']}`'s own beat its base on validation** "
                f"({row['monitor']} {candidate['value']:.4f}): its rows run as the base, "
                f"`{row['base']}`'s model at the base's keys, with its own parts off."
            )
        elif candidate is None:
            lines.append("")
            lines.append(
                f"`{row['experiment']}`'s search ran before its base trial was one of its candidates "
                f"(its `report.json` names none): its rows run its own best trial."
            )
    lines += [
        "",
        "| search | budget | finished / pruned | best validation | tuned keys |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        trials = row["trials"]
        best = "—" if row["best_value"] is None else f"{row['monitor']} {row['best_value']:.4f}"
        keys = _keys(row["best_params"])
        budget = str(row["budget"])
        if row.get("base"):
            budget = f"{row['base_trials']} of `{row['base']}` + {row['own_trials']}"
            if row.get("fixed_params"):
                keys += f"; from `{row['base']}`: {_keys(row['fixed_params'])}"
        lines.append(
            f"| `{row['experiment']}` | {budget} | {trials.get('complete', 0)} / "
            f"{trials.get('pruned', 0)} | {best} | {_cell(keys) or '—'} |"
        )
    notes = [row for row in rows if row.get("note")]
    if notes:
        lines.append("")
    for row in notes:
        lines.append(f"Note on the `{row['experiment']}` search (`{row['folder']}/{NOTE}`): {row['note']}")
    return lines


def results_command(
    datasets: list[str],
    seeds: list[int],
    labels: list[str] | None,
    data_root: str | None,
    runs_root: str,
    out: str,
    extras: list[str],
    tune_trials: str = "0",
    valid_ratio: float = DEFAULTS["valid_ratio"],
) -> str:
    """The command that regenerates the page (``labels`` None: every method)."""
    parts = [
        "python",
        "-m",
        "fedshare.results",
        "--datasets",
        ",".join(datasets),
        "--seeds",
        ",".join(map(str, seeds)),
    ]
    if labels is not None:
        parts += ["--methods", ",".join(labels)]
    parts += [
        *(["--data-root", data_root] if data_root is not None else []),
        "--runs-root",
        runs_root,
        "--out",
        out,
        *(["--tune-trials", str(tune_trials)] if str(tune_trials) != "0" else []),
        *(["--valid-ratio", str(valid_ratio)] if valid_ratio != DEFAULTS["valid_ratio"] else []),
    ]
    if extras:
        parts += ["--", *extras]
    return shlex.join(parts)
