"""The one durable writer: files replaced in one step, so a crash leaves the old file or the new one.

Every file the platform writes to last (config.yaml, command.txt, metrics.json, history.json,
checkpoints, snapshots, the baselines' histories, the request ledger and CSVs, the pages) goes
through `replace_file`, or `write_text` / `write_json` on top of it: the content goes to a
temporary file beside the target, is fsync'd, and replaces the target with ``os.replace``; the
folder entry is fsync'd too. The ledger's appends are fsync'd by the ledger itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8, ``\\n`` line ends) as the whole of ``path``, atomically."""
    replace_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON with sorted keys (NaN kept as NaN), atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (downloads and stores are checked by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
