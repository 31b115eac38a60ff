"""``python -m fedshare.unlearn run_dir=RUN [requests=FILE.csv] [method=contrastive | methods=[a,b]]``.

More unsharing requests on a finished run (or one that crashed while unlearning). The phase
itself (requests -> ledger -> deletion -> methods -> judging -> scrub) is
`fedshare.unlearning.phase`, which ``python -m fedshare.train`` runs right after learning.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from fedshare.reporting.unlearning_page import format_comparison
from fedshare.run import driver
from fedshare.run.build import build_model, load_run
from fedshare.unlearning.registry import check_config
from fedshare.unlearning.requests import RequestError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    opts: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("run_dir", "requests", "method", "methods"):
            print(
                f"error: expected run_dir=RUN [requests=FILE.csv] [method=NAME|methods=[a,b]], got {arg!r}",
                file=sys.stderr,
            )
            return 2
        opts[key] = value
    if "run_dir" not in opts:
        print("error: run_dir=RUN is required", file=sys.stderr)
        return 2
    run_dir = Path(opts["run_dir"])
    try:
        cfg, dm, model = load_run(run_dir)
        if "method" in opts:
            methods = [opts["method"]]
        elif "methods" in opts:
            methods = [m.strip() for m in opts["methods"].strip("[]").split(",") if m.strip()]
        else:
            methods = list(cfg.unlearn.methods) or ["contrastive"]
        check_config(OmegaConf.merge(cfg, {"unlearn": {"methods": methods}}))
        metrics = driver.unlearn(
            cfg, model, dm, run_dir, lambda d: build_model(cfg, d), methods, requests_file=opts.get("requests")
        )
    except (RequestError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if metrics:
        print(format_comparison(metrics, int(cfg.unlearn.k)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
