"""``python -m fedshare.report RUN_DIR [RUN_DIR ...] --out docs/UNLEARNING.md``: the unlearning page.

The page, its tables, figures and checks live in `fedshare.reporting.unlearning_page`. When the
page is in a git work tree, every run folder it names must have files tracked there
(`fedshare.reporting.records`); otherwise nothing is written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedshare.atomic import write_text
from fedshare.reporting.records import untracked_records
from fedshare.reporting.unlearning_page import DEFAULT_OUT, read_metrics, render_page


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedshare.report RUN_DIR [RUN_DIR ...] --out docs/UNLEARNING.md``; 2 on a bad run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m fedshare.report",
        description="Write the unlearning results page (Markdown) from finished unlearning run folders.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder holding metrics.json")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the page to write (default: {DEFAULT_OUT})")
    parser.add_argument("--k", type=int, default=None, help="K of @K metrics (default: from the keys)")
    opts = parser.parse_args(argv)

    runs, errors = [], []
    for run_dir in opts.runs:
        try:
            runs.append((run_dir, read_metrics(run_dir)))
        except (OSError, ValueError) as err:
            errors.append(f"run folder {run_dir}: {err}")
    out = Path(opts.out)
    # the page names every run folder (and links its figures): each must be a committed record
    errors += untracked_records(out, opts.runs)
    if errors:
        for error in errors:
            print(f"fedshare.report: error: {error}", file=sys.stderr)
        print(f"fedshare.report: nothing written to {out}", file=sys.stderr)
        return 2
    write_text(out, render_page(runs, out, argv, k=opts.k))
    print(f"wrote {out} ({len(runs)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
