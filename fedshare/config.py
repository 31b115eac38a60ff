"""Config composition: YAML groups under ``configs/`` merged with OmegaConf, then CLI overrides.

``compose(["data=ml-100k", "sharing=segments", "fed.rounds=50"])``:

1. ``configs/config.yaml`` gives the base keys and the default choice of every group
   (its ``defaults:`` mapping).
2. ``GROUP=NAME`` picks ``configs/GROUP/NAME.yaml``. The overlays ``experiment=NAME`` and
   ``debug=NAME`` are merged at the root after the groups; they may pick groups too (their
   own ``defaults:``), which a ``GROUP=NAME`` on the command line still overrides.
3. ``a.b=value`` sets an existing key (value parsed as YAML).

Anything unknown -- key, group, group member, or a value outside a key's accepted set --
raises ``ConfigError`` naming it and listing what is accepted, before any work is done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from fedshare.atomic import write_text
from fedshare.data.datasets import check_config as check_data
from fedshare.data.sharing import validate_config as check_sharing
from fedshare.unlearning.registry import check_config as check_unlearn

GROUPS = ("data", "model", "sharing", "trainer", "logger")
OVERLAYS = ("experiment", "debug")
OVERLAY_FILE = "overlay"  # overlay=PATH: a YAML file of keys (a tuned config), merged after the overlays

# Keys whose value must come from a fixed set; checked after composition so that a typo in a
# config file is caught as early as one on the command line.
# (data.* and sharing.* are checked by their own modules, in validate().)
ACCEPTED: dict[str, tuple[Any, ...]] = {
    "model.name": ("fedmf", "fedshare", "lightgcn", "popularity"),
    "logger.name": ("wandb", "none"),
    "logger.mode": ("offline", "online", "disabled"),
}


class ConfigError(ValueError):
    """A config that cannot be composed; the message says what and where."""


def config_dir() -> Path:
    """``$FEDSHARE_CONFIG_DIR`` if set, else the ``configs/`` folder next to the package."""
    env = os.environ.get("FEDSHARE_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def available(group: str, root: Path | None = None) -> list[str]:
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_yaml(path: Path) -> DictConfig:
    """One YAML file as a mapping; a parse error names the file and line."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def _group_file(group: str, name: str, root: Path, origin: str) -> Path:
    path = root / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {group} '{name}' ({origin}); accepted: {', '.join(available(group, root)) or 'none'}"
        )
    return path


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(
            f"cannot read argument '{text}': expected key=value (e.g. fed.rounds=50) or GROUP=NAME "
            f"with GROUP one of {', '.join(GROUPS + OVERLAYS)}, or overlay=FILE.yaml"
        )
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"cannot read argument '{text}': empty key before '='")
    return key, value


def parse_value(text: str) -> Any:
    """The value of a command-line ``key=value`` as YAML reads it (``5`` int, ``[1,2]`` list); else the text."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _pop_defaults(cfg: DictConfig, origin: str) -> dict[str, str | None]:
    if "defaults" not in cfg:
        return {}
    raw = OmegaConf.to_container(cfg.defaults)
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: 'defaults' must map a group to a name, got {raw!r}")
    unknown = sorted(set(raw) - set(GROUPS + OVERLAYS))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown group(s) {unknown} in 'defaults'; accepted: {', '.join(GROUPS + OVERLAYS)}"
        )
    del cfg["defaults"]
    return raw


def _keys_under(cfg: Any, prefix: str) -> str:
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    if isinstance(node, DictConfig):
        return ", ".join(str(k) for k in node.keys())
    return "(none: it is not a mapping)"


def _check_type(key: str, old: Any, new: Any, origin: str) -> Any:
    """Keep a key's type: a typo like ``fed.rounds=5O`` must not become a string."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        raise ConfigError(f"{origin}: '{key}' takes true or false, got {new!r}")
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        if isinstance(new, float) and new.is_integer():
            return int(new)
        raise ConfigError(f"{origin}: '{key}' takes an integer, got {new!r}")
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        raise ConfigError(f"{origin}: '{key}' takes a number, got {new!r}")
    if isinstance(old, str):
        if isinstance(new, (dict, list)):
            raise ConfigError(f"{origin}: '{key}' takes a string, got {new!r}")
        return str(new)
    if isinstance(old, ListConfig) and not isinstance(new, list):
        raise ConfigError(f"{origin}: '{key}' takes a list like [10,20], got {new!r}")
    if isinstance(old, DictConfig) and not isinstance(new, dict):
        raise ConfigError(f"{origin}: '{key}' is a group of keys ({_keys_under(old, '')}), not a value")
    return new


def set_key(cfg: DictConfig, key: str, value: Any, origin: str) -> None:
    """Set an existing dotted ``key``, keeping its type; an unknown key or a wrong type raises
    ``ConfigError`` naming ``origin`` and what is accepted."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        # find the deepest existing prefix to list what is accepted there
        parts = key.split(".")
        prefix = ""
        for part in parts[:-1]:
            nxt = f"{prefix}.{part}" if prefix else part
            if not isinstance(OmegaConf.select(cfg, nxt), DictConfig):
                break
            prefix = nxt
        where = f"under '{prefix}'" if prefix else "at the top level"
        raise ConfigError(f"{origin}: unknown key '{key}'; keys accepted {where}: {_keys_under(cfg, prefix)}")
    value = _check_type(key, parent[leaf], value, origin)
    with _unlocked(cfg):
        parent[leaf] = value


class _unlocked:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def _merge_overlay(cfg: DictConfig, overlay: DictConfig, origin: str) -> None:
    """Merge an overlay key by key, so an unknown key is reported with its full path."""

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            full = f"{prefix}.{key}" if prefix else str(key)
            value = node[key]
            target = OmegaConf.select(cfg, full)
            if isinstance(value, DictConfig) and isinstance(target, DictConfig):
                walk(value, full)
            else:
                plain = (
                    OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
                )
                set_key(cfg, full, plain, origin)

    walk(overlay, "")


def validate(cfg: DictConfig) -> None:
    for key, accepted in ACCEPTED.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = OmegaConf.select(cfg, key)
        if value not in accepted:
            raise ConfigError(
                f"'{key}={value}' is not accepted; choose one of: {', '.join(map(str, accepted))}"
            )
    ks = cfg.eval.ks
    if not ks or any(not isinstance(k, int) or k <= 0 for k in ks):
        raise ConfigError(f"'eval.ks' must be a non-empty list of positive integers, got {list(ks)}")
    if not 0 < cfg.fed.cohort_fraction <= 1:
        raise ConfigError(f"'fed.cohort_fraction' must be in (0, 1], got {cfg.fed.cohort_fraction}")
    if not isinstance(cfg.fed.nodes, int) or isinstance(cfg.fed.nodes, bool) or cfg.fed.nodes < 1:
        raise ConfigError(f"'fed.nodes' must be an integer >= 1, got {cfg.fed.nodes!r}")
    if cfg.fed.rounds < 0:
        raise ConfigError(f"'fed.rounds' must be >= 0, got {cfg.fed.rounds}")
    _check_selection(cfg.eval)
    group = OmegaConf.select(cfg, "model.negatives_group", default=None)
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 2):
        raise ConfigError(f"'model.negatives_group' must be an integer >= 2 (users per centroid), got {group!r}")
    # the data, sharing and unlearning packages own their rules; ask them now, before any work
    try:
        check_data(cfg.data)
        check_sharing(cfg.sharing)
        check_unlearn(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from err


MONITORED = ("recall", "ndcg", "hr")  # RankingMetrics' names: higher is better for each


def _check_selection(ecfg: DictConfig) -> None:
    """``eval.monitor`` names a validation metric the run computes (or is null); ``eval.patience`` >= 1 or null."""
    monitor = ecfg.get("monitor")  # null (or a run folder from before selection): the last round is tested
    if monitor is None:
        return
    accepted = [f"val/{m}@{k}" for m in MONITORED for k in ecfg.ks]
    base = str(monitor).split("/share=")[0]
    if not isinstance(monitor, str) or base not in accepted:
        raise ConfigError(
            f"'eval.monitor={monitor}' is not a validation metric of this run; choose one of: "
            f"{', '.join(accepted)} (or one of them by sharing group, e.g. {accepted[0]}/share=1)"
        )
    patience = ecfg.get("patience")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"'eval.patience' must be an integer >= 1 or null, got {patience!r}")


def compose_saved(path: Path) -> DictConfig:
    """A run's saved ``config.yaml``, validated and read-only (as ``compose`` returns it)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path} is missing: not a run folder?")
    cfg = load_yaml(Path(path))
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def compose(overrides: Sequence[str] = (), root: Path | None = None) -> DictConfig:
    """The resolved, validated, read-only config for ``overrides`` (CLI ``key=value`` strings)."""
    root = root or config_dir()
    base_path = root / "config.yaml"
    if not base_path.is_file():
        raise ConfigError(f"no base config at {base_path} (set FEDSHARE_CONFIG_DIR to the configs folder)")
    cfg = load_yaml(base_path)
    choices = _pop_defaults(cfg, str(base_path))
    for group in GROUPS + OVERLAYS:
        choices.setdefault(group, None)

    cli_choices: dict[str, str | None] = {}
    values: list[tuple[str, Any, str]] = []
    files: list[Path] = []
    for text in overrides:
        key, raw = _split_override(text)
        if key == OVERLAY_FILE:
            files.append(Path(raw.strip()).expanduser())
        elif key in GROUPS or key in OVERLAYS:
            name = raw.strip()
            cli_choices[key] = None if name in ("", "null", "none") and key in OVERLAYS else name
        else:
            values.append((key, parse_value(raw), f"override '{text}'"))

    # overlays first: they can change group choices, which the command line still overrides
    overlays: list[tuple[DictConfig, str]] = []
    for overlay in OVERLAYS:
        name = cli_choices.get(overlay, choices[overlay])
        choices[overlay] = name
        if name is None:
            continue
        origin = f"{overlay}={name}"
        path = _group_file(overlay, name, root, origin)
        body = load_yaml(path)
        picked = _pop_defaults(body, str(path))
        if set(picked) & set(OVERLAYS):
            raise ConfigError(f"{path}: an overlay cannot pick another overlay")
        choices.update(picked)
        overlays.append((body, str(path)))
    choices.update({k: v for k, v in cli_choices.items() if k in GROUPS})

    for group in GROUPS:
        name = choices[group]
        if name is None:
            raise ConfigError(f"no {group} chosen; accepted: {', '.join(available(group, root))}")
        path = _group_file(group, str(name), root, f"{group}={name}")
        if group in cfg:
            raise ConfigError(f"{base_path}: key '{group}' clashes with the config group of that name")
        cfg[group] = load_yaml(path)

    OmegaConf.set_struct(cfg, True)
    for body, origin in overlays:
        _merge_overlay(cfg, body, origin)
    for path in files:  # overlay=FILE (a tuned config, say): after the overlays, before key=value
        if not path.is_file():
            raise ConfigError(f"overlay={path}: no such file (a YAML mapping of config keys, as `fedshare.tune` writes)")
        body = load_yaml(path)
        if "defaults" in body:
            raise ConfigError(f"{path}: an overlay file sets keys only; pick groups on the command line")
        _merge_overlay(cfg, body, f"overlay={path}")
    for key, value, origin in values:
        set_key(cfg, key, value, origin)
    with _unlocked(cfg):
        cfg["choices"] = {k: choices[k] for k in GROUPS + OVERLAYS}
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.3}}`` -> ``{"model.lr": 0.3}`` (the inverse of `fedshare.tuning.search.overlay`)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save(cfg: DictConfig, path: Path) -> None:
    """Write atomically so a crash never leaves a half-written config behind."""
    write_text(Path(path), to_yaml(cfg))
