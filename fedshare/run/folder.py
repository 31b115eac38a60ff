"""The run folder: where a run writes, and whether it may (a new run never reuses one; resume=true continues one)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class RunFolderError(RuntimeError):
    """The run folder cannot be used (it holds another run)."""


def run_dir_for(cfg: DictConfig) -> Path:
    if cfg.paths.output_dir:
        return Path(cfg.paths.output_dir).expanduser().absolute()
    name = cfg.choices.experiment or cfg.model.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.paths.runs_root).expanduser().absolute() / name / stamp
    path, n = base, 1
    while path.exists():  # two runs started in the same second get their own folders
        path, n = base.with_name(f"{stamp}-{n}"), n + 1
    return path


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from (``resume=true``), or None for a new run.

    A new run never reuses a folder that holds a run. A resumed run needs the folder of an
    unfinished run (config.yaml and checkpoints/last.ckpt, no metrics.json) and the same
    config, except ``resume`` itself: a changed setting would make the result a mix of two runs.
    """
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    if not cfg.resume:
        earlier = [p.name for p in (config, metrics) if p.exists()]
        if earlier:  # never overwrite the record of an earlier run
            raise RunFolderError(
                f"{run_dir} already holds a run ({', '.join(earlier)}); choose another paths.output_dir, "
                "leave it unset for a new timestamped folder under paths.runs_root, or pass resume=true "
                "to continue an unfinished run"
            )
        return None
    if not cfg.paths.output_dir:
        raise RunFolderError("resume=true needs paths.output_dir=FOLDER, the folder of the run to continue")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if metrics.exists():
        raise RunFolderError(f"{run_dir} holds a finished run (metrics.json); there is nothing to resume")
    if not config.exists() or not ckpt.exists():
        missing = [str(p) for p in (config, ckpt) if not p.exists()]
        raise RunFolderError(f"cannot resume {run_dir}: missing {', '.join(missing)}")
    saved = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    now = OmegaConf.to_container(cfg, resolve=True)
    saved.pop("resume", None), now.pop("resume", None)
    changed = sorted(_diff(saved, now))
    if changed:
        raise RunFolderError(
            f"cannot resume {run_dir}: the config differs from its config.yaml at {', '.join(changed[:10])}; "
            "resume with the run's own settings"
        )
    return ckpt


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
