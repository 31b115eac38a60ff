"""Reading what a W&B run wrote offline, in a test.

``wandb.finish()`` returns once the run's exit is acknowledged, but W&B's service closes (and
flushes) the run's ``.wandb`` transaction log a moment later, in its own process. Read right
away, on a loaded machine, a short run's log can still be its 7-byte header. So a test waits,
with a deadline, until the log holds every key it expects, and then checks as before: a key
that never comes fails the test.
"""

from __future__ import annotations

import time
from pathlib import Path


def offline_log(folder: Path, keys: list[bytes], deadline_s: float = 60.0) -> bytes:
    """The bytes of the one offline run under ``folder/wandb``, once they hold all ``keys``
    (or when ``deadline_s`` has passed: the caller's asserts then say which key is missing)."""
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {folder / 'wandb'}, found {runs}"
    end = time.monotonic() + deadline_s
    while True:
        blob = b"".join(p.read_bytes() for p in sorted(runs[0].glob("*.wandb")))
        if all(key in blob for key in keys) or time.monotonic() > end:
            return blob
        time.sleep(0.2)
