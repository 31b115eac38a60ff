"""Entry point: ``python -m fedshare.train [GROUP=NAME ...] [key=value ...]``.

``train(cfg)`` (`fedshare.run.inprocess`) is the function tests and sweeps call; ``main()`` only
reads ``sys.argv``. A run writes into its folder: ``config.yaml``, ``metrics.json``,
``history.json``, ``checkpoints/last.ckpt`` and, with the W&B logger, the offline W&B run.
"""

from __future__ import annotations

import logging
import shlex
import sys
import warnings

from lightning_fabric.utilities.exceptions import MisconfigurationException

from fedshare.config import GROUPS, OVERLAYS, ConfigError, available, compose
from fedshare.data.readers import DatasetError
from fedshare.run.folder import RunFolderError
from fedshare.run.inprocess import RunInterrupted, train
from fedshare.unlearning.requests import RequestError

__all__ = ["main", "train"]


def usage() -> str:
    lines = [__doc__.strip(), "", "Config groups (GROUP=NAME):"]
    for group in (*GROUPS, *OVERLAYS):
        lines.append(f"  {group:11s} {', '.join(available(group))}")
    lines.append("Keys and their meaning: the comments in configs/config.yaml and configs/GROUP/NAME.yaml.")
    return "\n".join(lines)


class _NoLightningTips(logging.Filter):
    """Drops Lightning's advertising tips ('💡 Tip: ... install litlogger / litmodels')."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("💡 Tip:") and ("litlogger" in msg or "litmodels" in msg))


_NO_TIPS = _NoLightningTips()
# The logger Lightning's rank_zero_info writes to (lightning_utilities' rank_zero_module.log,
# rebound by pytorch_lightning.utilities.rank_zero); the tips come from Trainer.__init__
# (logger_connector: litlogger, callback_connector: litmodels). Every other message stays.
_LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


def quiet_library_noise() -> None:
    """Silence warnings that are about library internals, not about the run."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # (POSSIBLE_USER_WARNINGS=off would not do it: Lightning reads it once, at import, which has
    # happened by now, and it only turns off PossibleUserWarning warnings, not these log lines.)
    tips = logging.getLogger(_LIGHTNING_INFO_LOGGER)
    if _NO_TIPS not in tips.filters:
        tips.addFilter(_NO_TIPS)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_library_noise()
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        cfg = compose(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return exit_code(lambda: train(cfg, shlex.join(["python", "-m", "fedshare.train", *args])))


def exit_code(work) -> int:
    """Runs ``work()``; 0, or the exit code of the error it raised with its one-line message (a
    run's entry points share these: train, attack)."""
    try:
        work()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DatasetError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except RunFolderError as err:
        print(f"run folder error: {err}", file=sys.stderr)
        return 2
    except RequestError as err:
        print(f"request error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except MisconfigurationException as err:  # e.g. trainer.accelerator=gpu without a GPU
        print(f"trainer error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
