"""Compare flower/metrics.json with inprocess/metrics.json key by key (time_s keys aside).

Run from the repository root: python docs/runs/flower-ml100k/compare.py
"""

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timing(key: str) -> bool:
    return key.split("/")[-1] == "time_s"


a = json.loads((HERE / "flower" / "metrics.json").read_text())
b = json.loads((HERE / "inprocess" / "metrics.json").read_text())
keys = sorted(set(a) | set(b))
only = [k for k in keys if (k in a) != (k in b)]
compared = [k for k in keys if k in a and k in b and not timing(k)]
timed = [k for k in keys if k in a and k in b and timing(k)]


def same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


differ = [k for k in compared if not same(a[k], b[k])]
print(f"keys: flower {len(a)}, in-process {len(b)}, in one file only: {len(only)} {only}")
print(f"compared (time_s aside): {len(compared)}; bit-identical: {len(compared) - len(differ)}; differ: {len(differ)}")
for k in differ:
    print(f"  {k}: flower {a[k]!r} vs in-process {b[k]!r}")
for k in timed:
    print(f"  (not compared) {k}: flower {a[k]} s, in-process {b[k]} s")
sys.exit(1 if differ or only else 0)
