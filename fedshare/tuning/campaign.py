"""The results campaign's searches (``python -m fedshare.results --tune-trials N``).

One search per (dataset, searched experiment), each method's config chosen among the same number
of trials on a dataset, FedShare's staged at FedMF's (`STAGED`); planned here, run as
``python -m fedshare.tune`` subprocesses (`fedshare.tuning.search`), reused once done, and read
back for the page's tuning tables (`fedshare.reporting.results_page`). Also the keys every run
and search of the campaign shares: its data keys (`data_args`) and output flags (`RUN_FLAGS`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from fedshare.atomic import write_text
from fedshare.config import ConfigError, compose, config_dir

# a staged search: FedShare is FedMF plus its own knobs, so its search starts from FedMF's. It
# trains at the best of the first half of FedMF's search on the same data (its base.yaml) and
# searches only the knobs FedMF's does not, with the other half of the dataset's budget. Each
# method's config is so chosen among the same number of trials: FedMF's among its budget,
# FedShare's among half of FedMF's and as many of its own (a joint search of its 8 knobs with
# the same budget did not reach FedMF's validation on Last.fm or Amazon Beauty, at 4 knobs).
STAGED: dict[str, str] = {"fedshare": "fedmf"}
# where a run writes and what it prints; none of these changes its numbers
RUN_FLAGS = ["logger=none", "trainer.enable_progress_bar=false"]
# keys that decide no number: where the files are, and which device ran the run (each run's
# record names its machine). A run or search read from another folder, or trained on a GPU, is
# the same run or search.
PLACE_ONLY = ("data.root", "paths", "trainer.accelerator")
TAIL_LINES = 15  # lines of a failed run's log shown on the console
NOTE = "NOTE.md"  # a search's own note, shown under its dataset's tuning table


def place_only(key: str) -> bool:
    """Whether the dotted ``key`` is one of `PLACE_ONLY` or lies under one (``paths.output_dir``)."""
    return any(key == p or key.startswith(p + ".") for p in PLACE_ONLY)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


@dataclass
class Search:
    """One equal-budget search of a campaign: an experiment on a dataset, ``trials`` trials."""

    dataset: str
    experiment: str
    overrides: list[str]  # the run's keys every trial trains with (experiment, data, extras)
    trials: int  # its own trials
    folder: Path
    base: Search | None = None  # a staged search (STAGED): the search it starts from
    base_trials: int = 0  # ... at the best of that one's first base_trials trials
    base_knobs: list[str] = field(default_factory=list)  # that one's knobs: not searched again here

    @property
    def overlay(self) -> Path:
        return self.folder / "best.yaml"

    @property
    def base_overlay(self) -> Path:
        """A staged search's fixed keys: the best of its base's first ``base_trials`` trials."""
        return self.folder / "base.yaml"

    @property
    def budget(self) -> int:
        """Trials among which its config is chosen: its own, plus its base's that it starts from."""
        return self.trials + self.base_trials

    @property
    def log(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.log")

    @property
    def args(self) -> list[str]:
        resume = ["resume=true"] if (self.folder / "study.db").exists() else []
        staged = []
        if self.base is not None:  # its base's best trial is one of its candidates too (`add_base_trial`)
            staged = [
                f"overlay={self.base_overlay}",
                *(f"space.{k}=null" for k in self.base_knobs),
                f"base={self.base.folder}",
                f"base_trials={self.base_trials}",
            ]
        return [*self.overrides, *staged, f"trials={self.trials}", f"out={self.folder}", *RUN_FLAGS, *resume]

    @property
    def name(self) -> str:
        if self.base is not None:
            return (
                f"{self.dataset} search {self.experiment} ({self.trials} trials, at the best of "
                f"{self.base.experiment}'s first {self.base_trials})"
            )
        return f"{self.dataset} search {self.experiment} ({self.trials} trials)"

    def write_base(self) -> None:
        """``base.yaml``: the best of the base search's first ``base_trials`` trials. Written once;
        a resumed search must start from the same keys (its trials trained with them)."""
        from fedshare.tuning.search import best_of_first, overlay  # Optuna: only a search needs it

        assert self.base is not None
        keys, number, value = best_of_first(self.base.folder, self.base_trials)
        body = yaml.safe_dump(overlay(keys), sort_keys=False)
        if self.base_overlay.is_file():
            if yaml.safe_load(self.base_overlay.read_text()) != yaml.safe_load(body):
                raise ConfigError(
                    f"{self.base_overlay} holds other keys than the best of the first {self.base_trials} trials "
                    f"of {self.base.folder} (trial {number}); move {self.folder} away to search again"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        head = (
            f"# the best of the first {self.base_trials} trials of {self.base.folder} (trial {number}, "
            f"validation {value:.4f}): every trial of this search trains with these keys\n"
        )
        write_text(self.base_overlay, head + body)

    @property
    def run_overrides(self) -> list[str]:
        """What ``python -m fedshare.tune`` stores as this search's run keys (``search.yaml``)."""
        staged = [f"overlay={self.base_overlay}"] if self.base is not None else []
        return [*self.overrides, *staged, *RUN_FLAGS]

    @property
    def space(self) -> dict[str, Any]:
        """The space this search draws from now: ``configs/tune/<model>.yaml``'s, less (staged) its
        base's knobs, as ``python -m fedshare.tune`` gets it from `args`."""
        from fedshare.tuning.search import tune_config  # Optuna: only a search needs it

        model = str(compose(list(self.overrides)).model.name)
        nulls = [f"space.{k}=null" for k in self.base_knobs]
        return OmegaConf.to_container(tune_config(model, nulls, config_dir()).space, resolve=True)

    def check_folder(self) -> None:
        """Refuses a folder that holds another search (say one left from an earlier protocol at the
        same path): its trials did not train with this search's keys, or with the config they
        compose to now (its ``search.yaml`` records it; older ones do not), so neither its best
        keys nor its budget count here."""
        spec = self.folder / "search.yaml"
        stored = (yaml.safe_load(spec.read_text()) or {}) if spec.is_file() else {}
        found = stored.get("run_overrides")
        if found is None or [_same_path(a) for a in found] != [_same_path(a) for a in self.run_overrides]:
            raise ConfigError(
                f"{self.folder} holds another search: its search.yaml trains with {found}, this "
                f"campaign's with {self.run_overrides}; move {self.folder} away to search again"
            )
        if "config" in stored and (self.base is None or self.base_overlay.is_file()):
            from fedshare.tuning.search import changed_keys, knobs  # Optuna: only a search needs it

            # every trial sets the knobs it searches, so their YAML defaults reach none of them
            searched = set(knobs(stored.get("space")))
            now = OmegaConf.to_container(compose(list(self.run_overrides)), resolve=True)
            changed = changed_keys(stored["config"], now, skip=lambda k: place_only(k) or k in searched)
            if changed:
                raise ConfigError(
                    f"{self.folder}'s trials trained with another config than its keys compose now (a YAML "
                    f"default changed since?): {'; '.join(changed[:10])}; move {self.folder} away to search again"
                )
        if self.base is not None:
            space = stored.get("space") or {}
            searched = [k for k in self.base_knobs if _lookup(space, k) is not None]
            why = f"it searches {', '.join(searched)} again" if searched else None
            if not self.base_overlay.is_file():
                why = f"{self.base_overlay} is missing"
            if why:
                raise ConfigError(
                    f"{self.folder} is not a search at the best of {self.base.folder}'s first "
                    f"{self.base_trials} trials: {why}; move {self.folder} away to search again"
                )
        if "space" in stored:  # a finished search of another space (configs/tune/ changed since)
            from fedshare.tuning.search import knobs  # Optuna: only a search needs it

            was, now = knobs(stored["space"]), knobs(self.space)
            moved = [f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted({*was, *now}) if was.get(k) != now.get(k)]
            if moved:
                raise ConfigError(
                    f"{self.folder} searched another space than configs/tune/ gives now: {'; '.join(moved[:10])}; "
                    f"move {self.folder} away to search again"
                )

    def done(self) -> bool:
        report = read_json(self.folder / "report.json")
        if not report or not self.overlay.is_file():
            return False
        self.check_folder()
        if self.base is not None and not report.get("base"):  # searched before its base was a candidate
            return False
        trials = report.get("trials", {})
        return trials.get("complete", 0) + trials.get("pruned", 0) >= self.trials


def _same_path(arg: str) -> str:
    """A run key with its path keys (``overlay=``, ``data.root=``) resolved, so that two spellings
    of one folder compare equal."""
    key, eq, value = arg.partition("=")
    if eq and key in ("overlay", "data.root"):
        return f"{key}={Path(value).resolve()}"
    return arg


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def parse_budget(text: str, datasets: list[str]) -> dict[str, int]:
    """``--tune-trials``: ``N`` for every dataset, or ``N,gowalla=M,...`` (a dataset's own budget,
    still the same for every method searched on it); 0 searches nothing there."""
    budget: dict[str, int] = {}
    default = None
    for item in (x.strip() for x in str(text).split(",") if x.strip()):
        name, eq, value = item.rpartition("=")
        try:
            trials = int(value)
        except ValueError:
            trials = -1
        if trials < 0 or (eq and name not in datasets) or (not eq and default is not None):
            raise ValueError(
                f"--tune-trials takes N (trials per method on every dataset) or N,DATASET=M,... with "
                f"integers >= 0 and DATASET one of --datasets ({', '.join(datasets)}); got {text!r}"
            )
        if eq:
            budget[name] = trials
        else:
            default = trials
    return {d: budget.get(d, default or 0) for d in datasets}


def data_args(dataset: str, data_root: str | None, valid_ratio: float) -> list[str]:
    """The data keys of a dataset's runs and searches: its config, the root of a real dataset, and a
    validation split carved from train where the dataset has none (`fedshare.reporting.results_page.DEFAULTS`)."""
    cfg = yaml.safe_load((config_dir() / "data" / f"{dataset}.yaml").read_text()) or {}
    args = [f"data={dataset}"]
    if cfg.get("format") != "synthetic" and data_root is not None:
        args.append(f"data.root={data_root}")
    split = cfg.get("split") or {}
    if (
        split.get("mode") == "given"
        and not (cfg.get("files") or {}).get("valid")
        and not split.get("valid_ratio")
        and valid_ratio
    ):
        args.append(f"data.split.valid_ratio={valid_ratio}")
    return args


def plan_searches(
    datasets: list[str],
    experiments: list[str],
    trials: dict[str, int],
    data_root: str | None,
    runs_root: Path,
    extras: list[str],
    valid_ratio: float,
) -> list[Search]:
    """The searches of ``experiments`` (those whose best keys the methods' runs take): one per (dataset, experiment), each method's config chosen
    among ``trials[dataset]`` trials (none where it is 0). A staged search (`STAGED`) comes after its
    base (planned too, even where its method is not asked for): it runs the second half of the
    budget at the best of the base's first half."""
    order = list(dict.fromkeys(e for w in experiments for e in ((STAGED[w], w) if w in STAGED else (w,))))
    base_knobs = {STAGED[e]: list(search_knobs(STAGED[e])) for e in order if e in STAGED}  # once, not per dataset
    searches = []
    for dataset in datasets:
        budget = trials.get(dataset)
        if not budget:
            continue
        data = data_args(dataset, data_root, valid_ratio)
        planned: dict[str, Search] = {}
        for experiment in order:
            search = Search(
                dataset,
                experiment,
                [f"experiment={experiment}", *data, *extras],
                budget,
                runs_root / "tune" / f"{dataset}-{experiment}",
            )
            base = planned.get(STAGED.get(experiment, ""))
            if base is not None and budget >= 2:
                search.base, search.base_trials = base, budget // 2
                search.trials = budget - budget // 2
                search.base_knobs = base_knobs[base.experiment]
            planned[experiment] = search
            searches.append(search)
    return searches


def search_knobs(experiment: str) -> dict[str, dict[str, Any]]:
    """The knobs of an experiment's search space (``configs/tune/<model>.yaml``)."""
    from fedshare.tuning.search import knobs, tune_config  # Optuna: only a search needs it

    model = str(compose([f"experiment={experiment}"]).model.name)
    return knobs(OmegaConf.to_container(tune_config(model, [], config_dir()).space))


def run_searches(searches: list[Search], dry_run: bool = False) -> list[str]:
    """Runs (or resumes) each search that has not used its budget; returns the failures."""
    failed = []
    for i, search in enumerate(searches, 1):
        head = f"[search {i}/{len(searches)}] {search.name}"
        command = "python -m fedshare.tune " + " ".join(shlex.quote(a) for a in search.args)
        if search.done():
            print(f"{head} ... reused ({search.folder / 'report.json'})")
            continue
        if dry_run:
            print(f"{head} would run: {command}")
            continue
        print(f"{head} ... ", end="", flush=True)
        search.folder.parent.mkdir(parents=True, exist_ok=True)
        if search.base is not None:
            try:
                search.write_base()
            except (ConfigError, RuntimeError) as err:  # the base search has not run far enough, say
                failed.append(f"{search.name}: {err}")
                print(f"FAILED: {err}")
                continue
        t0 = time.perf_counter()
        with open(search.log, "a") as log:
            log.write(f"# {command}\n")
            log.flush()
            code = subprocess.call(
                [sys.executable, "-m", "fedshare.tune", *search.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if code != 0 or not search.done():
            failed.append(f"{search.name}: exit {code}; log: {search.log}")
            print(f"FAILED (exit {code}); last lines of {search.log}:")
            for line in tail(search.log):
                print(f"    {line}")
        else:
            print(f"{time.perf_counter() - t0:.1f} s")
    return failed


def search_rows(searches: list[Search]) -> dict[str, list[dict[str, Any]]]:
    """What the page says of each search: budget, trials finished and pruned, best value, keys."""
    out: dict[str, list[dict[str, Any]]] = {}
    for search in searches:
        report = read_json(search.folder / "report.json") or {}
        out.setdefault(search.dataset, []).append(
            {
                "experiment": search.experiment,
                "budget": search.budget,
                "own_trials": search.trials,
                "base": search.base.experiment if search.base is not None else None,
                "base_trials": search.base_trials,
                "fixed_params": report.get("fixed_params", {}),
                "trials": report.get("trials", {}),
                "monitor": report.get("monitor"),
                "best_value": report.get("best_value"),
                "best_params": report.get("best_params", {}),
                "base_candidate": report.get("base"),  # a staged search's base trial, one of its candidates
                "folder": str(search.folder),
                "note": _note(search.folder),
            }
        )
    return out


def _note(folder: Path) -> str | None:
    """A search's own ``NOTE.md`` (committed beside its study), as one paragraph: what a reader
    must know of how the search ran that its records do not say (e.g. code changed since)."""
    path = folder / NOTE
    if not path.is_file():
        return None
    return " ".join(path.read_text().split()) or None
