"""Entry point: ``python -m fedshare.tune [GROUP=NAME ...] [key=value ...] [trials=N] [resume=true] ...``.

A hyperparameter search on validation with Optuna (`fedshare.tuning.search`). The run's keys
(``experiment=fedmf data=ml-100k data.root=...``) fix what every trial trains; the search's own
keys are those of ``configs/tune/<model>.yaml`` (``trials``, ``out``, ``resume``,
``sampler_seed``, ``startup_trials``, ``pruner.*``, ``space.*``; a staged search's ``base``,
``base_trials``, ``as_base``), set the same way. The best
trial's keys end up in ``OUT/best.yaml``: ``python -m fedshare.train ... overlay=OUT/best.yaml``.
The last line printed is the search's summary as JSON.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys

from omegaconf import OmegaConf

from fedshare.config import ConfigError, _split_override, compose, config_dir
from fedshare.data.readers import DatasetError
from fedshare.run.folder import RunFolderError
from fedshare.train import quiet_library_noise


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(the run's overrides, the search's): a key of the search file goes to the search."""
    run, tune = [], []
    base = compose([a for a in args if _split_override(a)[0].split(".")[0] not in TUNE_KEYS])
    path = config_dir() / "tune" / f"{base.model.name}.yaml"
    keys = set(OmegaConf.load(path).keys()) if path.is_file() else TUNE_KEYS
    for text in args:
        (tune if _split_override(text)[0].split(".")[0] in keys else run).append(text)
    return run, tune


TUNE_KEYS = {"trials", "sampler_seed", "startup_trials", "pruner", "out", "resume", "space", "base", "base_trials", "as_base"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_library_noise()
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    from fedshare.tuning.search import SearchError, search, tune_config  # Optuna: only a search needs it

    try:
        run_args, tune_args = split_args(args)
        base = compose(run_args)
        tcfg = tune_config(str(base.model.name), tune_args, config_dir())
        summary = search(run_args, tcfg, shlex.join(["python", "-m", "fedshare.tune", *args]))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (SearchError, DatasetError, RunFolderError) as err:
        print(f"search error: {err}", file=sys.stderr)
        return 2
    print(f"[tune] best {summary['monitor']} {summary['best_value']:.4f} (trial {summary['best_trial']}); "
          f"overlay: {summary['overlay']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
