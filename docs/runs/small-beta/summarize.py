"""Validation Recall@20 of the small-beta study (docs/runs/small-beta/run.sh) beside its FedMF base.

Reads only `val/*` keys of each run's metrics.json and the base trial's validation value from the
staged search's report.json; prints a Markdown table. Usage: python docs/runs/small-beta/summarize.py
"""
import json
import sys
from pathlib import Path

here = Path(__file__).parent
print("| dataset | variant | val Recall@20 (best round) | vs base |")
print("|---|---|---|---|")
for d in sorted(p for p in here.iterdir() if p.is_dir()):
    report = json.loads(Path(f"docs/runs/results/tune/{d.name}-fedshare/report.json").read_text())
    base = report["base"]["value"]
    print(f"| {d.name} | base (beta 0, FedMF) | {base:.4f} | |")
    for v in ("b0.05", "b0.1", "b0.2", "select"):
        m = d / v / "seed0" / "metrics.json"
        if not m.is_file():
            continue
        r = json.loads(m.read_text())
        val = r["val/recall@20"]
        print(f"| {d.name} | {v} | {val:.4f} ({int(r['best_round'])}) | {100 * (val / base - 1):+.2f}% |")
sys.exit(0)
