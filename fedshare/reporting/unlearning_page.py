"""Unlearning report: before/after table and figures from a run's ``metrics.json``.

An unlearning run (learn -> unshare -> unlearn with several methods) writes the learned model's
metrics under ``learn/...`` and each method M's under ``unlearn/M/...``::

    learn/test/recall@K  learn/test/ndcg@K  learn/revoking/recall@K  learn/revoking/ndcg@K
    learn/forget/hit@K   learn/mia/auc
    unlearn/M/<the same>  unlearn/M/time_s  unlearn/M/storage_bytes

``forget/hit@K`` is the share of revoked items still in their user's server-side top-K (lower is
more forgotten); ``mia/auc`` is a membership-inference attack telling revoked pairs from never-shared
held-out pairs by their server-side scores (0.5: indistinguishable). Both are read against
``retrain``, the exact but costly reference.

K is taken from the keys (20 when present, else the smallest found; 20 when none) unless given.

``python -m fedshare.report RUN_DIR [RUN_DIR ...] --out docs/UNLEARNING.md`` writes a Markdown
results page from the runs' ``metrics.json``, ``config.yaml`` and ``command.txt``: per run the
command, the setup, the table, and the checks of ``contrastive`` against ``retrain`` (see
``checks``), all computed. Every folder is checked first; if one is bad nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fedshare.unlearning.registry import REFERENCE, names
from fedshare.unlearning.registry import label as method_label

METHODS = names()  # the registry's order
BEFORE = "before (learned)"
METRICS_FILE = "metrics.json"
BEFORE_AFTER_PNG = "unlearning_before_after.png"
STORAGE_PNG = "unlearning_storage.png"
CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
DEFAULT_OUT = "docs/UNLEARNING.md"
DEFAULT_K = 20

_K_KEY = re.compile(r"^(?:learn|unlearn/[^/]+)/(?:test|revoking|forget)/(?:recall|ndcg|hit)@(\d+)$")


# ----------------------------------------------------------------------------------------- table
def unlearning_methods(metrics: Mapping[str, Any]) -> list[str]:
    """Methods with ``unlearn/M/...`` keys: the known ones in canonical order, then others as met."""
    found: list[str] = []
    for key in metrics:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "unlearn" and parts[1] and parts[1] not in found:
            found.append(parts[1])
    return [m for m in METHODS if m in found] + [m for m in found if m not in METHODS]


def detect_k(metrics: Mapping[str, Any], default: int = DEFAULT_K) -> int:
    """The K of the ``@K`` keys: ``default`` when it is among them or none are there, else the smallest."""
    ks = {int(m.group(1)) for key in metrics if (m := _K_KEY.match(key))}
    if not ks or default in ks:
        return default
    return min(ks)


def columns(k: int = DEFAULT_K) -> list[str]:
    return [
        "method",
        f"recall@{k}",
        f"ndcg@{k}",
        f"revoking recall@{k}",
        f"forget hit@{k}",
        "mia auc",
        "time_s",
        "storage_bytes",
    ]


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _row(metrics: Mapping[str, Any], prefix: str, k: int, costs: bool) -> list[float | None]:
    row = [
        _value(metrics, f"{prefix}/test/recall@{k}"),
        _value(metrics, f"{prefix}/test/ndcg@{k}"),
        _value(metrics, f"{prefix}/revoking/recall@{k}"),
        _value(metrics, f"{prefix}/forget/hit@{k}"),
        _value(metrics, f"{prefix}/mia/auc"),
    ]
    if costs:
        return [*row, _value(metrics, f"{prefix}/time_s"), _value(metrics, f"{prefix}/storage_bytes")]
    return [*row, None, None]


def comparison_rows(metrics: Mapping[str, Any], k: int | None = None) -> tuple[list[str], list[list]]:
    """``(columns, rows)``: a ``before (learned)`` row from ``learn/``, then one row per method.

    A missing value is ``None`` (always so for the before row's time and storage).
    """
    k = detect_k(metrics) if k is None else k
    rows: list[list] = [[BEFORE, *_row(metrics, "learn", k, costs=False)]]
    rows += [[method_label(m), *_row(metrics, f"unlearn/{m}", k, costs=True)] for m in unlearning_methods(metrics)]
    return columns(k), rows


def human_bytes(n: float | None) -> str:
    """``512 B``, ``1.5 KB``, ``12.3 MB``, ... (powers of 1024)."""
    if n is None:
        return "-"
    if not math.isfinite(n):
        return str(n)
    size = float(n)
    for unit in ["B", "KB", "MB", "GB"]:
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if column == "storage_bytes":
        return human_bytes(value)
    if column == "time_s":
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_comparison(metrics: Mapping[str, Any], k: int | None = None) -> str:
    """The before/after table as aligned plain text (4 decimals, time in s, storage in B/KB/MB)."""
    cols, rows = comparison_rows(metrics, k)
    cells = [cols] + [[_cell(c, v) for c, v in zip(cols, row)] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:]))]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# ---------------------------------------------------------------------------------------- figures
def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _require_methods(metrics: Mapping[str, Any]) -> list[str]:
    methods = unlearning_methods(metrics)
    if not methods:
        raise ValueError("no unlearn/<method>/... keys in the metrics")
    return methods


def _emphasize_reference(ax: Any) -> None:
    for tick in ax.get_xticklabels():
        if tick.get_text() == REFERENCE:
            tick.set_fontweight("bold")


def plot_before_after(metrics: Mapping[str, Any], path: str | Path, k: int | None = None) -> Path:
    """Two panels: test and revoking-users Recall@K per method after unlearning (the learned model's
    levels as dashed lines), and forget Hit@K and MIA AUC per method (retrain highlighted)."""
    import matplotlib  # only when a figure is drawn (a run without unlearning never loads it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _require_methods(metrics)
    k = detect_k(metrics) if k is None else k
    x = list(range(len(methods)))
    width = 0.38
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9.0, 1.6 * len(methods) + 4), 5))
    try:
        series = [
            ("test", f"test Recall@{k}", "tab:blue"),
            ("revoking", f"revoking users' Recall@{k}", "tab:orange"),
        ]
        for i, (split, label, color) in enumerate(series):
            values = [_nan(_value(metrics, f"unlearn/{m}/{split}/recall@{k}")) for m in methods]
            left.bar([p + (i - 0.5) * width for p in x], values, width=width, color=color, label=label)
            before = _value(metrics, f"learn/{split}/recall@{k}")
            if before is not None:
                left.axhline(before, color=color, linestyle="--", linewidth=1.2, label=f"{label}, before")
        left.set_xticks(x, [method_label(m) for m in methods], rotation=20, ha="right")
        left.set_ylabel(f"Recall@{k}")
        left.set_title("Recommendation quality after unlearning")
        left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)

        series = [
            ("forget/hit", f"forget Hit@{k} (lower: more forgotten)", "tab:red"),
            ("mia/auc", "MIA AUC (0.5: unseen)", "tab:purple"),
        ]
        for i, (key, label, color) in enumerate(series):
            suffix = f"{key}@{k}" if key == "forget/hit" else key
            values = [_nan(_value(metrics, f"unlearn/{m}/{suffix}")) for m in methods]
            bars = right.bar(
                [p + (i - 0.5) * width for p in x], values, width=width, color=color, label=label
            )
            for m, bar in zip(methods, bars):
                if m == REFERENCE:
                    bar.set_edgecolor("black")
                    bar.set_linewidth(2)
                    bar.set_hatch("//")
            before = _value(metrics, f"learn/{suffix}")
            if before is not None:
                right.axhline(
                    before,
                    color=color,
                    linestyle="--",
                    linewidth=1.2,
                    label=f"{label.split(' (')[0]}, before",
                )
        right.axhline(0.5, color="gray", linestyle=":", linewidth=1, label="AUC 0.5 (chance)")
        right.set_xticks(x, [method_label(m) for m in methods], rotation=20, ha="right")
        _emphasize_reference(right)
        right.set_ylim(0, 1.05)
        title = "Forgetting (hatched: retrain, the reference)" if REFERENCE in methods else "Forgetting"
        right.set_title(title)
        right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_storage(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Two panels: storage_bytes per method (log scale when it spans over 100x) and time_s per method."""
    import matplotlib  # only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    methods = _require_methods(metrics)
    storage = [_value(metrics, f"unlearn/{m}/storage_bytes") for m in methods]
    times = [_value(metrics, f"unlearn/{m}/time_s") for m in methods]
    x = list(range(len(methods)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9.0, 1.6 * len(methods) + 4), 4))
    try:
        colors = ["tab:gray" if m == REFERENCE else "tab:green" for m in methods]
        bars = left.bar(x, [_nan(v) for v in storage], color=colors)
        positive = [v for v in storage if v is not None and v > 0]
        if positive and max(positive) / min(positive) > 100:
            if any(v is not None and v <= 0 for v in storage):
                left.set_yscale("symlog", base=1024, linthresh=min(positive))
            else:
                left.set_yscale("log", base=1024)
        left.bar_label(bars, labels=[human_bytes(v) if v is not None else "" for v in storage], fontsize=7)
        left.set_xticks(x, [method_label(m) for m in methods], rotation=20, ha="right")
        _emphasize_reference(left)
        left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        scale = "" if left.get_yscale() == "linear" else " (log scale)"
        left.set_ylabel(f"storage kept for unlearning{scale}")
        left.set_title("Storage per method")

        bars = right.bar(x, [_nan(v) for v in times], color=colors)
        right.bar_label(bars, labels=[f"{v:.2f} s" if v is not None else "" for v in times], fontsize=7)
        right.set_xticks(x, [method_label(m) for m in methods], rotation=20, ha="right")
        _emphasize_reference(right)
        right.set_ylabel("seconds")
        right.set_title("Unlearning time per method")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/metrics.json``, which must exist and hold ``unlearn/<method>/...`` keys."""
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (is {run_dir} a finished run folder?)")
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{file}: expected a JSON object of metrics, got {type(metrics).__name__}")
    if not unlearning_methods(metrics):
        raise ValueError(
            f"{file}: no unlearn/<method>/... keys; not an unlearning run "
            "(make one with `python -m fedshare.train experiment=fedshare_unlearn`)"
        )
    return metrics


def write_figures(run_dir: str | Path, k: int | None = None) -> list[Path]:
    """Write ``unlearning_before_after.png`` and ``unlearning_storage.png`` into ``run_dir``."""
    metrics = read_metrics(run_dir)
    run_dir = Path(run_dir)
    return [
        plot_before_after(metrics, run_dir / BEFORE_AFTER_PNG, k),
        plot_storage(metrics, run_dir / STORAGE_PNG),
    ]


# ------------------------------------------------------------------------------------------- W&B
CHART_COLUMNS = [1, 4, 5, 6, 7]  # recall@k, forget hit@k, mia auc, time_s, storage_bytes


def log_wandb(run: Any, metrics: Mapping[str, Any], k: int | None = None) -> dict[str, Any]:
    """Log ``unlearn/comparison`` (the table) and ``unlearn/chart/<metric>`` bar charts to ``run``.

    Each chart has its own two-column table (method, metric) holding the rows with a value.
    Returns what was logged.
    """
    import wandb  # W&B only for a run that logs to it

    cols, rows = comparison_rows(metrics, k)
    logged: dict[str, Any] = {"unlearn/comparison": wandb.Table(columns=cols, data=[list(r) for r in rows])}
    for i in CHART_COLUMNS:
        metric = cols[i]
        data = [[row[0], row[i]] for row in rows if row[i] is not None]
        if not data:
            continue
        table = wandb.Table(columns=["method", metric], data=data)
        logged[f"unlearn/chart/{metric}"] = wandb.plot.bar(
            table, "method", metric, title=f"{metric} per method"
        )
    run.log(logged)
    return logged


# ------------------------------------------------------------------------------------------- runs
def _has_unlearning(file: Path) -> bool:
    try:
        metrics = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and bool(unlearning_methods(metrics))


def find_unlearning_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (itself included, recursively) whose metrics.json has unlearn/ keys."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted({f.parent for f in root.rglob(METRICS_FILE) if f.is_file() and _has_unlearning(f)})


# ------------------------------------------------------------------------------------ results page
# Targets of contrastive unlearning, checked against the runs' own numbers (DESIGN.md section 3).
RECALL_GAP_MAX = 0.02  # |c - r| / r of test Recall@K
MIA_GAP_MAX = 0.05  # |c - r| of the MIA AUC
SPEEDUP_MIN = 20.0  # retrain time / contrastive time
STORAGE_MAX = {"fru": 0.20, "fedEraser": 0.05}  # contrastive storage / theirs
_EPS = 1e-12  # a value printed equal to its target is not failed by float rounding


@dataclass(frozen=True)
class Check:
    """One line of "checks against retrain": ``status`` is PASS, FAIL or n/a."""

    name: str
    text: str
    status: str

    def line(self) -> str:
        mark = f"**{self.status}**" if self.status != "n/a" else "n/a"
        return f"- {self.name}: {self.text} — {mark}"


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def checks(metrics: Mapping[str, Any], k: int | None = None) -> list[Check] | None:
    """The checks of ``contrastive`` against ``retrain`` (and delete_only, fru, fedEraser when run).

    ``None`` unless both contrastive and retrain were run. A value a run did not write makes its
    check ``n/a``, never PASS.
    """
    methods = unlearning_methods(metrics)
    if "contrastive" not in methods or REFERENCE not in methods:
        return None
    k = detect_k(metrics) if k is None else k

    def get(method: str, suffix: str) -> float | None:
        return _value(metrics, f"unlearn/{method}/{suffix}")

    def missing(*pairs: tuple[str, float | None, str]) -> str | None:
        absent = [f"{m}'s {what}" for m, v, what in pairs if v is None or not math.isfinite(v)]
        return f"n/a ({', '.join(absent)} not recorded)" if absent else None

    out: list[Check] = []

    name = f"Recall@{k} gap, contrastive vs retrain"
    target = f"(target ≤ {RECALL_GAP_MAX:.0%})"
    c, r = get("contrastive", f"test/recall@{k}"), get(REFERENCE, f"test/recall@{k}")
    if why := missing(("contrastive", c, f"recall@{k}"), (REFERENCE, r, f"recall@{k}")):
        out.append(Check(name, f"{why} {target}", "n/a"))
    elif r == 0:
        out.append(Check(name, f"n/a (retrain's recall@{k} is 0) {target}", "n/a"))
    else:
        gap = abs(c - r) / r
        text = f"|{c:.4f} - {r:.4f}| / {r:.4f} = {gap:.2%} {target}"
        out.append(Check(name, text, _status(gap <= RECALL_GAP_MAX + _EPS)))

    name = "MIA AUC gap, contrastive vs retrain"
    target = f"(target ≤ {MIA_GAP_MAX})"
    c, r = get("contrastive", "mia/auc"), get(REFERENCE, "mia/auc")
    if why := missing(("contrastive", c, "mia auc"), (REFERENCE, r, "mia auc")):
        out.append(Check(name, f"{why} {target}", "n/a"))
    else:
        gap = abs(c - r)
        out.append(
            Check(name, f"|{c:.4f} - {r:.4f}| = {gap:.4f} {target}", _status(gap <= MIA_GAP_MAX + _EPS))
        )

    name = f"Forget Hit@{k}, contrastive vs delete_only"
    target = "(target ≤ delete_only's: at least as strong; lower is more forgotten)"
    if "delete_only" not in methods:
        out.append(Check(name, f"delete_only not run {target}", "n/a"))
    else:
        c, d = get("contrastive", f"forget/hit@{k}"), get("delete_only", f"forget/hit@{k}")
        if why := missing(("contrastive", c, f"forget hit@{k}"), ("delete_only", d, f"forget hit@{k}")):
            out.append(Check(name, f"{why} {target}", "n/a"))
        else:
            out.append(Check(name, f"{c:.4f} vs {d:.4f} {target}", _status(c <= d + _EPS)))

    name = "Speed-up over retrain"
    target = f"(target ≥ {SPEEDUP_MIN:.0f}x)"
    c, r = get("contrastive", "time_s"), get(REFERENCE, "time_s")
    if why := missing((REFERENCE, r, "time_s"), ("contrastive", c, "time_s")):
        out.append(Check(name, f"{why} {target}", "n/a"))
    elif c <= 0:
        out.append(Check(name, f"n/a (contrastive's time_s is {c:.2f}) {target}", "n/a"))
    else:
        speedup = r / c
        text = f"{r:.2f} s / {c:.2f} s = {speedup:.1f}x {target}"
        out.append(Check(name, text, _status(speedup >= SPEEDUP_MIN - _EPS)))

    for other, limit in STORAGE_MAX.items():
        name = f"Storage, contrastive vs {other}"
        target = f"(target ≤ {limit:.0%} of {other}'s)"
        if other not in methods:
            out.append(Check(name, f"{other} not run {target}", "n/a"))
            continue
        c, o = get("contrastive", "storage_bytes"), get(other, "storage_bytes")
        if why := missing(("contrastive", c, "storage_bytes"), (other, o, "storage_bytes")):
            out.append(Check(name, f"{why} {target}", "n/a"))
        elif o <= 0:
            out.append(Check(name, f"n/a ({other}'s storage_bytes is {o:.0f}) {target}", "n/a"))
        else:
            ratio = c / o
            text = f"{human_bytes(c)} / {human_bytes(o)} = {ratio:.2%} {target}"
            out.append(Check(name, text, _status(ratio <= limit + _EPS)))
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(column: str, value: Any) -> str:
    if column == "storage_bytes" and value is not None and not isinstance(value, str):
        human = human_bytes(value)
        raw = f"{value:.0f} B" if math.isfinite(value) else str(value)
        return human if human == raw else f"{human} ({raw})"
    return _md_escape(_cell(column, value))


def markdown_table(metrics: Mapping[str, Any], k: int | None = None) -> str:
    """``comparison_rows`` as a Markdown table (storage human-readable, then raw bytes)."""
    cols, rows = comparison_rows(metrics, k)
    lines = [
        "| " + " | ".join(_md_escape(c) for c in cols) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(cols) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c, v) for c, v in zip(cols, row)) + " |" for row in rows]
    return "\n".join(lines)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/config.yaml`` as a plain mapping; ``None`` when absent or unreadable."""
    file = Path(run_dir) / CONFIG_FILE
    try:
        cfg = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _lookup(cfg: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def read_command(run_dir: str | Path) -> str | None:
    """The one-line command in ``run_dir/command.txt``; ``None`` when absent or empty."""
    try:
        text = (Path(run_dir) / COMMAND_FILE).read_text().strip()
    except OSError:
        return None
    return text or None


def _count(value: Any) -> str:
    if value is None:
        return "not recorded"
    value = float(value)
    return f"{value:.0f}" if value.is_integer() else f"{value:g}"


def _show(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def _link(target: Path, page_dir: Path) -> str:
    rel = Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()
    return f"<{rel}>" if any(ch in rel for ch in " ()<>") else rel


def run_section(run_dir: str | Path, metrics: Mapping[str, Any], page: Path, k: int | None = None) -> str:
    """One run's section of the results page (``page``: where the page goes, for the PNG links)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    name, seed = _lookup(cfg, "data.name"), _lookup(cfg, "seed")
    lines = [f"## {_show(name) if name is not None else 'unknown data'}, seed {_show(seed)}", ""]
    lines.append(f"Run folder: `{run_dir}`" + ("" if cfg is not None else f" (no readable {CONFIG_FILE})"))
    lines.append("")
    command = read_command(run_dir)
    if command is None:
        lines += [f"Command: command not recorded (no {COMMAND_FILE} in the run folder).", ""]
    else:
        lines += ["Command:", "", "```bash", command, "```", ""]
    methods = _lookup(cfg, "unlearn.methods")
    lines += [
        f"Setup: {_show(_lookup(cfg, 'fed.rounds'))} federated rounds; "
        f"{_count(metrics.get('unlearn/revoking_users'))} revoking users, "
        f"{_count(metrics.get('unlearn/revoked_pairs'))} revoked pairs; request fractions: "
        f"users {_show(_lookup(cfg, 'unlearn.requests.user_fraction'))}, "
        f"items {_show(_lookup(cfg, 'unlearn.requests.item_fraction'))}; methods: "
        + (
            ", ".join(map(str, methods))
            if isinstance(methods, list)
            else ", ".join(unlearning_methods(metrics))
        )
        + ".",
        "",
        markdown_table(metrics, k),
        "",
        "### Checks against retrain",
        "",
    ]
    found = checks(metrics, k)
    if found is None:
        have = ", ".join(unlearning_methods(metrics))
        lines.append(f"Not computed: needs both contrastive and retrain; this run has {have}.")
    else:
        lines += [c.line() for c in found]
        tally = {s: sum(c.status == s for c in found) for s in ("PASS", "FAIL", "n/a")}
        lines += ["", f"{tally['PASS']} PASS, {tally['FAIL']} FAIL, {tally['n/a']} n/a."]
    figures = [(f, run_dir / f) for f in (BEFORE_AFTER_PNG, STORAGE_PNG) if (run_dir / f).is_file()]
    if figures:
        lines += ["", "### Figures", ""]
        lines += [f"![{f.removesuffix('.png')}]({_link(p, page.parent)})" for f, p in figures]
    return "\n".join(lines) + "\n"


def _torch_version() -> str:
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line() -> str:
    return f"{platform.platform()}, torch {_torch_version()}, {os.cpu_count()} CPUs"


def render_page(
    runs: Sequence[tuple[str | Path, Mapping[str, Any]]],
    page: Path,
    argv: Sequence[str],
    generated: datetime | None = None,
    k: int | None = None,
) -> str:
    generated = generated or datetime.now(timezone.utc)
    lines = [
        "# Unlearning results",
        "",
        f"Generated by `python -m fedshare.report {shlex.join(argv)}` from the runs' `metrics.json` "
        f"(with their `{CONFIG_FILE}` and `{COMMAND_FILE}`); no number on this page is typed by hand. "
        f"Generated at {generated.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}.",
        "",
        f"Machine (where this page was generated): {machine_line()}.",
        "",
        "Targets of the checks (contrastive against retrain): "
        f"test Recall@K within {RECALL_GAP_MAX:.0%} (relative), MIA AUC within {MIA_GAP_MAX}, "
        "forget Hit@K no higher than delete_only's, "
        f"at least {SPEEDUP_MIN:.0f}x faster than retrain, storage at most "
        + " and ".join(f"{v:.0%} of {m}'s" for m, v in STORAGE_MAX.items())
        + ".",
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(run_section(d, m, page, k) for d, m in runs)
