"""Files replaced in one step: a crash leaves the old file or the new one, never half of one.

Every durable writer of the platform (checkpoints, snapshots, the request ledger and CSVs)
goes through `replace_file`: the content goes to a temporary file beside the target, is
fsync'd, and replaces the target with ``os.replace``; the folder entry is fsync'd too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Makes a rename or a new file's entry in ``folder`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
