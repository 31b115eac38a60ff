"""The end-of-run report on the terminal: test metrics by sharing group, the unlearning table."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from fedshare.reporting.unlearning_page import format_comparison, write_figures


def group_rows(metrics: dict[str, float], groups: list[str] | None = None) -> tuple[list[str], list[list]]:
    """Test metrics as rows (all users, then each sharing group) x columns (metric@K)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith("test/"):
            continue
        name, _, group = key[len("test/") :].partition("/")
        rows.setdefault(group or "all users", {})[name] = value
    order = ["all users"] + [f"share={g}" for g in groups or []]
    names = sorted(rows, key=lambda r: order.index(r) if r in order else len(order))
    cols = sorted(
        {c for r in rows.values() for c in r}, key=lambda c: (c.split("@")[0], int(c.split("@")[1]))
    )
    return cols, [[name, *(rows[name].get(c, math.nan) for c in cols)] for name in names]


def format_table(metrics: dict[str, float], groups: list[str] | None = None) -> str:
    cols, rows = group_rows(metrics, groups)
    if not rows:
        return "(no test metrics)"
    width = max(len(r[0]) for r in rows) + 2
    lines = ["".ljust(width) + "".join(c.rjust(11) for c in cols)]
    for name, *values in rows:
        lines.append(name.ljust(width) + "".join(f"{v:11.4f}" for v in values))
    return "\n".join(lines)


def report_run(
    title: str, metrics: dict[str, float], cfg: DictConfig, run_dir: Path, groups: list[str] | None = None
) -> None:
    """The end of a run on the terminal: test metrics, the before/after unlearning table (and
    its figures in the run folder), the run folder."""
    print(f"\nTest metrics ({title}):")
    print(format_table(metrics, groups))
    if any(k.startswith("unlearn/") for k in metrics):
        print(
            f"\nBefore / after unlearning ({int(metrics['unlearn/revoked_pairs'])} revoked pairs of "
            f"{int(metrics['unlearn/revoking_users'])} users):"
        )
        print(format_comparison(metrics, int(cfg.unlearn.k)))
        write_figures(run_dir)
    print(f"Run folder: {run_dir}")
