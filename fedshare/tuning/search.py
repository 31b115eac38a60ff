"""A hyperparameter search on validation: Optuna's TPE, pruned on the validation curve.

`search(run_overrides, tune_cfg)` is ``python -m fedshare.tune``. The search's folder holds:

- ``search.yaml``: what is searched (the run's overrides, the space, the budget, and the config
  those overrides compose to); a resumed search must be this same one, on the same YAML defaults;
- ``study.db``: the Optuna study in SQLite (``optuna-dashboard sqlite:///OUT/study.db``);
- ``trials/trial-NNNN/``: each trial is a normal run folder (config, metrics, history, ...);
- ``best.yaml``: the best trial's keys as a config overlay (``python -m fedshare.train
  overlay=OUT/best.yaml ...``), ``report.md`` and ``report.json``: the best value, the trials
  run and pruned, each knob's importance (Optuna's PED-ANOVA). A search whose run takes an
  ``overlay=FILE`` (another search's best keys, say) trains every trial with those keys; its
  ``best.yaml`` holds them too, so it alone reproduces the best trial. ``space.KEY=null``
  leaves a knob of the space file out of the search. A staged search (``base=FOLDER
  base_trials=N``: its overlay is the best of FOLDER's first N trials) has that trial among its
  candidates too, at the knobs' ``as_base`` values (`add_base_trial`).

A trial's value is its run's ``eval.monitor`` (the selected round's validation, `fedshare.eval.
selection`); after every validation the trial reports the validation so far, and Optuna's
median pruner stops a trial whose curve is below the median of the earlier ones at that round.
Nothing here reads a test metric: the objective takes ``val/`` keys only (a test poisons the
test split and checks the search is unchanged). A killed search resumes with ``resume=true``:
finished and pruned trials stay; the trial that was running is marked failed, its folder
renamed ``...-incomplete``, and the search goes on until ``trials`` have finished or pruned.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import shlex
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from fedshare.atomic import write_json, write_text
from fedshare.config import ConfigError, compose, flat, load_yaml, parse_value, set_key
from fedshare.run.faults import trial_faults

log = logging.getLogger("fedshare")
STUDY = "fedshare"  # one study per search folder
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
BASE_ATTR = "base_search"  # the user attribute that marks a staged search's base trial (`add_base_trial`)


class SearchError(RuntimeError):
    """A search that cannot start or continue; the message says why and what to do."""


# ---- the space -----------------------------------------------------------------------------------
def knobs(space: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """The search space's knobs by config key: ``{"model.lr": {"low":..., "high":..., "log":...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (space or {}).items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if value is None:  # space.model.lr=null: not searched (the run's own value, or an overlay's)
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"space.{full}: expected {{low, high[, log]}} or {{choices: [...]}}, got {value!r}")
        if "choices" in value or "low" in value or "high" in value:
            extra = set(value) - {"choices", "low", "high", "log"}
            if extra or ("choices" in value) == ("low" in value or "high" in value):
                raise ConfigError(
                    f"space.{full}: a knob is {{low, high[, log]}} or {{choices: [...]}}, got keys {sorted(value)}"
                )
            if "choices" in value and (not isinstance(value["choices"], list) or not value["choices"]):
                raise ConfigError(f"space.{full}.choices: a non-empty list, got {value['choices']!r}")
            if "low" in value and not (
                isinstance(value.get("low"), int | float) and isinstance(value.get("high"), int | float)
                and value["low"] < value["high"]
            ):
                raise ConfigError(f"space.{full}: needs numbers low < high, got {value.get('low')!r}, {value.get('high')!r}")
            out[full] = value
        else:
            out.update(knobs(value, full))
    return out


def check_space(space: dict[str, dict[str, Any]], cfg: DictConfig) -> None:
    """Every knob is a key of the run's config (so a typo stops the search before any trial)."""
    for key, knob in space.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise ConfigError(f"space.{key}: the run's config has no key {key!r}")
        if "low" in knob and knob.get("log") and knob["low"] <= 0:
            raise ConfigError(f"space.{key}: a log range needs low > 0, got {knob['low']}")


def distribution(key: str, knob: dict[str, Any], cfg: DictConfig) -> optuna.distributions.BaseDistribution:
    """A knob as Optuna's distribution: an int range where the config key holds an int, else a
    float range; or its choices."""
    if "choices" in knob:
        return optuna.distributions.CategoricalDistribution(list(knob["choices"]))
    value, log_scale = OmegaConf.select(cfg, key), bool(knob.get("log"))
    if isinstance(value, int) and not isinstance(value, bool):
        return optuna.distributions.IntDistribution(int(knob["low"]), int(knob["high"]), log=log_scale)
    return optuna.distributions.FloatDistribution(float(knob["low"]), float(knob["high"]), log=log_scale)


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """One trial's values, each drawn from its knob's `distribution`."""
    values = {}
    for key, knob in space.items():
        d = distribution(key, knob, cfg)
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, list(d.choices))
        elif isinstance(d, optuna.distributions.IntDistribution):
            values[key] = trial.suggest_int(key, d.low, d.high, log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
    return values


def _inside(d: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return value in d.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and d.low <= value <= d.high


def add_base_trial(
    study: optuna.Study,
    base: Path,
    base_trials: int,
    as_base: dict[str, Any],
    space: dict[str, dict[str, Any]],
    cfg: DictConfig,
    run_overrides: Sequence[str],
) -> None:
    """A staged search's base as one of its candidates: the best of the first ``base_trials``
    trials of the search in ``base`` (the keys every trial here trains at, from the run's
    overlay) is this model with its knobs at ``as_base`` (FedShare with no alignment and no fusion
    is FedMF), so it enters the study as a finished trial with the base trial's value and
    validation curve, and the knobs not in ``as_base`` at the run's own values (they do nothing
    there). Its budget is the base search's: it is not one of this search's ``trials``.
    Added once; a resumed search keeps it."""
    if any(BASE_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return
    if base_trials <= 0:
        raise ConfigError(f"base_trials must be > 0 with base={base}, got {base_trials}")
    unknown = sorted(set(as_base) - set(space))
    if unknown:
        raise ConfigError(f"as_base: {', '.join(unknown)} not knobs of this search; its knobs: {', '.join(space)}")
    keys, number, value = best_of_first(base, base_trials)
    fixed = fixed_keys(run_overrides)
    differ = [f"{k}: {fixed.get(k)!r} vs {v!r}" for k, v in sorted(keys.items()) if k not in space and fixed.get(k) != v]
    if differ:
        raise SearchError(
            f"the run's overlay keys are not the best of the first {base_trials} trials of {base} "
            f"(trial {number}): {', '.join(differ)}"
        )
    params = {k: as_base[k] if k in as_base else OmegaConf.select(cfg, k) for k in space}
    dists = {k: distribution(k, space[k], cfg) for k in space}
    outside = [f"{k}={v!r}" for k, v in params.items() if not _inside(dists[k], v)]
    if outside:
        raise ConfigError(f"the base trial's values lie outside this search's space: {', '.join(outside)}")
    source = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{base / 'study.db'}")
    trial = next(t for t in source.get_trials(deepcopy=False) if t.number == number)
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions=dists,
            value=value,
            intermediate_values=dict(trial.intermediate_values),
            user_attrs={
                BASE_ATTR: str(base),
                "base_trial": number,
                "best_round": trial.user_attrs.get("best_round"),
                "folder": trial.user_attrs.get("folder"),
            },
        )
    )
    log.info("base: trial %d of %s (%.4f) is a candidate of this search, at %s", number, base, value, as_base)


def own_trials(study: optuna.Study, states: Sequence[optuna.trial.TrialState] | None = None) -> list:
    """The study's own trials (in ``states``): every one but a staged search's base trial."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if BASE_ATTR not in t.user_attrs]


def changed_keys(
    old: dict[str, Any], new: dict[str, Any], skip: Callable[[str], bool] = lambda key: False
) -> list[str]:
    """``key: old -> new`` for each dotted key two (nested) configs disagree on, sorted; keys for
    which ``skip`` is true are not compared."""
    a, b = flat(old), flat(new)
    missing = object()
    return [
        f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
        for k in sorted(set(a) | set(b))
        if not skip(k) and a.get(k, missing) != b.get(k, missing)
    ]


def _without_config(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``search.yaml`` without the config its keys compose to: the search's keys and space."""
    return {k: v for k, v in spec.items() if k != "config"}


def fixed_keys(run_overrides: Sequence[str]) -> dict[str, Any]:
    """The keys the run's ``overlay=FILE`` files set (in order, the last wins): what every trial
    trains with, so that ``best.yaml`` holds them too and alone reproduces the best trial."""
    out: dict[str, Any] = {}
    for text in run_overrides:
        key, _, value = text.partition("=")
        if key == "overlay":
            out.update(flat(OmegaConf.to_container(OmegaConf.load(value), resolve=True)))
    return out


def best_of_first(out: Path, n: int) -> tuple[dict[str, Any], int, float]:
    """The best finished trial among the first ``n`` trials (finished or pruned, by number) of
    the search in ``out``: (its keys, its number, its value). What a search that starts from
    another search's config (`fedshare.results`' staged searches) takes as its fixed keys."""
    db = out / "study.db"
    if not db.is_file():
        raise SearchError(f"{db} does not exist: run that search first")
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    first = sorted(study.get_trials(deepcopy=False, states=DONE), key=lambda t: t.number)[:n]
    if len(first) < n:
        raise SearchError(f"{out} has {len(first)} finished or pruned trials, {n} are needed: run it further first")
    complete = [t for t in first if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise SearchError(f"none of the first {n} trials of {out} finished (all pruned)")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    fixed = fixed_keys(OmegaConf.to_container(OmegaConf.load(out / "search.yaml"))["run_overrides"])
    return {**fixed, **best.params}, best.number, float(best.value)


def overlay(values: dict[str, Any]) -> dict[str, Any]:
    """``{"model.lr": 0.3}`` as the nested mapping an overlay file holds: ``{"model": {"lr": 0.3}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


# ---- pruning -------------------------------------------------------------------------------------
class PruneOnValidation(pl.Callback):
    """Reports each validation of ``monitor`` to the trial (step: the round) and stops a trial
    the pruner rejects."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not pl_module.history["val"]:
            return
        entry = pl_module.history["val"][-1]
        value = float(entry[self.monitor])
        self.trial.report(-math.inf if math.isnan(value) else value, step=int(entry["round"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"round {entry['round']}: {self.monitor} {value:.4f} below the median")


# ---- the search ----------------------------------------------------------------------------------
def default_out(cfg: DictConfig) -> Path:
    name = f"{cfg.choices.experiment or cfg.model.name}-{cfg.data.name}-seed{cfg.seed}"
    return Path(cfg.paths.runs_root) / "tune" / name


def _lock(out: Path):
    """An exclusive lock on the search folder: a second search there fails at once."""
    handle = open(out / ".lock", "w")  # noqa: SIM115 (held for the whole search)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SearchError(f"{out} is in use by another search (its .lock is held)") from None
    return handle


def _open_study(
    out: Path, search: dict[str, Any], tcfg: DictConfig, resume: bool, warmup_rounds: int
) -> optuna.Study:
    db, spec = out / "study.db", out / "search.yaml"
    if db.exists() and not resume:
        raise SearchError(
            f"{out} already holds a search (study.db): add resume=true to continue it, or give another out="
        )
    if resume:
        if not db.exists():
            raise SearchError(f"resume=true, but {db} does not exist: nothing to resume")
        stored = OmegaConf.to_container(OmegaConf.load(spec)) if spec.exists() else None
        if stored is not None and "config" not in stored:  # written before search.yaml kept the config
            log.warning("%s does not record the config its trials trained with: only its keys are compared", spec)
            search = _without_config(search)
        if stored != search:
            changed = changed_keys((stored or {}).get("config", {}), search.get("config", {}))
            if stored is not None and changed and _without_config(stored) == _without_config(search):
                raise SearchError(
                    f"resume=true, but the config of {spec}'s trials is not what the same keys compose "
                    f"now (a YAML default changed?): {'; '.join(changed[:10])}; give another out= to search again"
                )
            raise SearchError(
                f"resume=true, but {spec} holds another search: {stored} (now: {search}); give another out="
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_text(spec, OmegaConf.to_yaml(OmegaConf.create(search)))
    sampler = optuna.samplers.TPESampler(seed=int(tcfg.sampler_seed), n_startup_trials=int(tcfg.startup_trials))
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=int(tcfg.pruner.startup_trials), n_warmup_steps=warmup_rounds, n_min_trials=1
    )
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{db}",
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=resume,
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.info("trial %d was running when the search stopped: marked failed, it runs again", trial.number)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # public ask-and-tell API
        folder = out / "trials" / f"trial-{trial.number:04d}"
        if folder.exists():
            folder.rename(folder.with_name(folder.name + "-incomplete"))
    return study


def search(run_overrides: Sequence[str], tcfg: DictConfig, command: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) the search; returns its summary (as ``report.json``)."""
    from fedshare.run.inprocess import train  # the trials are in-process runs (Lightning, DGL)

    base = compose(list(run_overrides))
    monitor = base.eval.monitor
    if monitor is None or not str(monitor).startswith("val/"):
        raise ConfigError(f"a search needs eval.monitor set to a val/ key, got {monitor!r}")
    space = knobs(OmegaConf.to_container(tcfg.space, resolve=True))
    if not space:
        raise ConfigError("the search space is empty (configs/tune/<model>.yaml 'space')")
    check_space(space, base)
    out = Path(tcfg.out) if tcfg.out else default_out(base)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        what = {
            "run_overrides": list(run_overrides),
            "space": OmegaConf.to_container(tcfg.space, resolve=True),
            "sampler_seed": int(tcfg.sampler_seed),
            "startup_trials": int(tcfg.startup_trials),
            "pruner": OmegaConf.to_container(tcfg.pruner, resolve=True),
            # what the run keys compose to (every trial's config but the searched keys and its
            # folder): a resumed search whose YAML defaults changed since would mix two configs
            "config": OmegaConf.to_container(base, resolve=True),
        }
        # steps are rounds: the first pruner.warmup validations are never pruned
        warmup_rounds = int(tcfg.pruner.warmup) * max(1, int(base.eval.every))
        study = _open_study(out, what, tcfg, bool(tcfg.resume), warmup_rounds)
        staged = OmegaConf.select(tcfg, "base", default=None)
        if staged:
            as_base = flat(OmegaConf.to_container(tcfg.as_base, resolve=True) or {})
            add_base_trial(study, Path(staged), int(tcfg.base_trials), as_base, space, base, run_overrides)
        if command:
            with open(out / "commands.txt", "a") as f:
                f.write(command + "\n")
        group = f"tune-{out.name}"

        def objective(trial: optuna.Trial) -> float:
            values = suggest(trial, space, base)
            folder = out / "trials" / f"trial-{trial.number:04d}"
            extra = [f"{k}={json.dumps(v)}" for k, v in values.items()]
            overrides = [*run_overrides, *extra, f"paths.output_dir={folder}"]
            if base.logger.name == "wandb":  # every trial into one W&B group: the dashboard shows the sweep
                overrides.append(f"logger.group={group}")
            cfg = compose(overrides)
            total = int(tcfg.trials)
            done = len(own_trials(study, DONE))
            print(f"[tune] trial {trial.number} ({done + 1}/{total}): {', '.join(extra)}", flush=True)
            metrics, _ = train(
                cfg,
                shlex.join(["python", "-m", "fedshare.train", *overrides]),
                callbacks=[PruneOnValidation(trial, str(monitor)), *trial_faults(trial.number)],
            )
            value = float(metrics[str(monitor)])  # the selected round's validation: no test key is read
            trial.set_user_attr("best_round", metrics.get("best_round"))
            trial.set_user_attr("folder", str(folder))
            print(f"[tune] trial {trial.number}: {monitor} {value:.4f} (round {metrics.get('best_round')})", flush=True)
            return value

        remaining = int(tcfg.trials) - len(own_trials(study, DONE))
        if remaining > 0:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study.optimize(objective, n_trials=remaining, catch=())
        return write_report(study, out, space, str(monitor), int(tcfg.trials), fixed_keys(run_overrides))
    finally:
        lock.close()


def write_report(
    study: optuna.Study,
    out: Path,
    space: dict[str, dict[str, Any]],
    monitor: str,
    budget: int,
    fixed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``best.yaml`` (the overlay: the run's fixed overlay keys, then the best trial's), ``report.md``
    and ``report.json``."""
    fixed = {k: v for k, v in (fixed or {}).items() if k not in space}
    trials = study.get_trials(deepcopy=False)
    own = own_trials(study)
    count = {s.name.lower(): sum(t.state == s for t in own) for s in optuna.trial.TrialState}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise SearchError(f"no trial of {out} finished: nothing to report")
    best = study.best_trial
    based = next((t for t in trials if BASE_ATTR in t.user_attrs), None)
    base = None
    if based is not None:
        base = {
            "search": based.user_attrs[BASE_ATTR],
            "trial": based.user_attrs["base_trial"],
            "number": based.number,  # its number in this study
            "value": based.value,
            "chosen": best.number == based.number,
        }
    try:  # PED-ANOVA: Optuna's importance that needs no scikit-learn (fANOVA would)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator) if len(complete) > 1 else {}
    except Exception as err:  # too few distinct values, say
        log.warning("knob importances not computed: %s", err)
        importance = {}
    write_text(out / "best.yaml", OmegaConf.to_yaml(OmegaConf.create(overlay({**fixed, **best.params}))))
    summary = {
        "monitor": monitor,
        "best_value": best.value,
        "best_trial": best.number,
        "best_round": best.user_attrs.get("best_round"),
        "best_params": best.params,
        "fixed_params": fixed,  # what every trial trained with from the run's overlay=FILE (not searched)
        "best_folder": best.user_attrs.get("folder"),
        "budget": budget,
        "trials": count,  # this search's own trials (a staged search's base trial is its base's)
        "base": base,
        "importance": {k: float(v) for k, v in importance.items()},
        "overlay": str(out / "best.yaml"),
        "storage": f"sqlite:///{out / 'study.db'}",
    }
    write_json(out / "report.json", summary)
    lines = [
        f"# Search: {out.name}",
        "",
        f"- objective: {monitor} of each trial's selected round (validation; maximised), {budget} trials",
        f"- trials: {count['complete']} finished, {count['pruned']} pruned, {count['fail']} failed",
        f"- best: trial {best.number}, {monitor} = {best.value:.4f} (round {summary['best_round']})",
        *(
            [
                f"- base: trial {base['number']} is trial {base['trial']} of {base['search']} (its base, "
                f"{monitor} = {base['value']:.4f}), here with the knobs at their `as_base` values"
                + (": no trial of this search beat it, so the model runs as its base" if base["chosen"] else "")
            ]
            if base
            else []
        ),
        f"- overlay: `overlay={out / 'best.yaml'}`",
        *([f"- fixed in every trial (the run's overlay): {', '.join(f'`{k}={_fmt(v)}`' for k, v in fixed.items())}"] if fixed else []),
        f"- study: `optuna-dashboard sqlite:///{out / 'study.db'}`",
        "",
        "| knob | best value | importance |",
        "|---|---|---|",
    ]
    for key in space:
        imp = importance.get(key)
        lines.append(f"| `{key}` | {_fmt(best.params.get(key))} | {'' if imp is None else f'{imp:.3f}'} |")
    lines += ["", "| trial | state | " + monitor + " | " + " | ".join(f"`{k}`" for k in space) + " |"]
    lines.append("|---" * (3 + len(space)) + "|")
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        params = " | ".join(_fmt(t.params.get(k)) for k in space)
        state = "base" if BASE_ATTR in t.user_attrs else t.state.name.lower()
        lines.append(f"| {t.number} | {state} | {value} | {params} |")
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def tune_config(model: str, overrides: Sequence[str], root: Path) -> DictConfig:
    """``configs/tune/<model>.yaml`` with the tune keys of the command line set: the same
    ``key=value`` rules as every config (an unknown key or a wrong type names itself); under
    ``space.`` a knob's bounds or choices may take any shape the file allows."""
    path = root / "tune" / f"{model}.yaml"
    if not path.is_file():
        accepted = sorted(p.stem for p in (root / "tune").glob("*.yaml"))
        raise ConfigError(f"no search space for model {model!r} ({path}); spaces exist for: {', '.join(accepted)}")
    cfg = load_yaml(path)
    OmegaConf.set_struct(cfg, True)
    for text in overrides:
        key, raw = text.split("=", 1)
        if key.startswith("space."):
            with open_dict(cfg):
                OmegaConf.update(cfg, key, parse_value(raw), merge=True)
        else:
            set_key(cfg, key, parse_value(raw), f"override '{text}'")
    return cfg
