"""Embedding snapshots for unlearning: the server's tables at chosen rounds, plus the edge log.

Unlearning a revoked share restarts the server from the latest snapshot taken before the
edges entered, so the snapshots are all the server keeps besides the edge log. A snapshot
that silently changed on disk would make the "unlearned" model depend on unknown data, so
every load checks size, sha256, names, shapes and dtypes against ``manifest.json`` and
refuses a mismatch instead of returning it.

Layout of a store folder: ``snapshot-r{round:05d}.safetensors`` per snapshot and
``manifest.json`` listing them by round. Each file is written to a temporary file in the
same folder, fsynced and moved into place with ``os.replace``, so a crash never leaves a
half-written file. The data file and the manifest are two replaces: a crash between them,
when a round is saved again, leaves a file whose sha256 disagrees with the manifest, which
``load`` and ``verify`` report rather than use. One writer per folder is assumed.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from fedshare.atomic import replace_file, sha256_file

SPEC_KEY = "unlearn.snapshots"
MANIFEST = "manifest.json"
_ENTRY_KEYS = ("round", "file", "shapes", "dtypes", "sha256", "bytes")


class SnapshotError(RuntimeError):
    """A snapshot or the manifest is missing, unreadable or differs from what was written."""


def _is_int(x: object) -> bool:
    # bool is an int subclass, but `snapshots: true` is a config mistake, not the count 1
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def snapshot_rounds(spec: object, rounds: int) -> list[int]:
    """The rounds at which to snapshot, sorted and without repeats.

    ``spec`` is a count ``K >= 1`` (K rounds evenly spaced over ``[0, rounds]``, ends
    included, rounded half up; round 0 is the state before the first round) or a list of
    round numbers in ``[0, rounds]``.
    """
    if not _is_int(rounds) or rounds < 0:
        raise ValueError(f"snapshot_rounds: rounds must be an int >= 0, got {rounds!r}")
    rounds = int(rounds)
    accepted = f"an int K >= 1 or a non-empty list of ints in [0, {rounds}]"
    if _is_int(spec):
        k = int(spec)
        if k < 1:
            raise ValueError(f"{SPEC_KEY} must be {accepted}, got {spec!r}")
        if k == 1:
            return [0]
        # i * rounds / (k - 1) rounded half up, in integers: no float error at the ends
        return sorted({(2 * i * rounds + (k - 1)) // (2 * (k - 1)) for i in range(k)})
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) == 0:
        raise ValueError(f"{SPEC_KEY} must be {accepted}, got {spec!r}")
    bad = [r for r in spec if not _is_int(r) or not 0 <= r <= rounds]
    if bad:
        raise ValueError(f"{SPEC_KEY} must be {accepted}, got {list(spec)!r} (bad: {bad!r})")
    return sorted({int(r) for r in spec})


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SnapshotStore:
    """One folder of verified snapshots, keyed by round."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST

    @staticmethod
    def filename(round_: int) -> str:
        return f"snapshot-r{round_:05d}.safetensors"

    # -- manifest ------------------------------------------------------------------------

    def _snapshot_files(self) -> list[Path]:
        return sorted(self.folder.glob("snapshot-r*.safetensors")) if self.folder.is_dir() else []

    def entries(self) -> list[dict]:
        """The manifest's entries, sorted by round.

        A folder with neither manifest nor snapshot files is an empty store; snapshot files
        without a manifest mean the manifest was lost, which is an error.
        """
        path = self.manifest_path
        if not path.exists():
            if self._snapshot_files():
                raise SnapshotError(f"{path}: missing, but the folder holds snapshot files")
            return []
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SnapshotError(f"{path}: unparsable ({e})") from e
        snapshots = data.get("snapshots") if isinstance(data, dict) else None
        if not isinstance(snapshots, list):
            raise SnapshotError(f'{path}: expected {{"snapshots": [...]}}, got {type(data).__name__}')
        for i, entry in enumerate(snapshots):
            problem = self._entry_problem(entry)
            if problem:
                raise SnapshotError(f"{path}: snapshots[{i}] {problem}")
        return sorted(snapshots, key=lambda e: e["round"])

    @staticmethod
    def _entry_problem(entry: object) -> str | None:
        if not isinstance(entry, dict):
            return f"is a {type(entry).__name__}, expected an object"
        missing = [k for k in _ENTRY_KEYS if k not in entry]
        if missing:
            return f"lacks {missing}"
        if not _is_int(entry["round"]) or entry["round"] < 0 or not _is_int(entry["bytes"]):
            return "has a non-int round or bytes"
        if not isinstance(entry["file"], str) or Path(entry["file"]).name != entry["file"]:
            return f"file must be a plain file name, got {entry['file']!r}"
        if not isinstance(entry["shapes"], dict) or not isinstance(entry["dtypes"], dict):
            return "shapes and dtypes must be objects"
        return None

    def _write_manifest(self, entries: list[dict]) -> None:
        text = json.dumps({"snapshots": sorted(entries, key=lambda e: e["round"])}, indent=2) + "\n"
        self._atomic(self.manifest_path, lambda tmp: tmp.write_text(text))

    def _atomic(self, path: Path, write: Callable[[Path], Any]) -> None:
        """``write(tmp)`` fills a temporary file beside ``path``, which then replaces it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_file(path, write)

    # -- snapshots -----------------------------------------------------------------------

    def rounds(self) -> list[int]:
        return [e["round"] for e in self.entries()]

    def latest_before(self, round_: int) -> int | None:
        """The newest snapshot taken strictly before ``round_``: where a replay starts."""
        earlier = [r for r in self.rounds() if r < round_]
        return max(earlier) if earlier else None

    def save(self, round_: int, tensors: dict[str, Tensor]) -> dict:
        """Writes ``tensors`` as the snapshot of ``round_`` (replacing one there) and returns its entry."""
        if not _is_int(round_) or round_ < 0:
            raise ValueError(f"snapshot round must be an int >= 0, got {round_!r}")
        round_ = int(round_)
        if not tensors:
            raise ValueError(f"snapshot of round {round_}: no tensors to save")
        bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise ValueError(f"snapshot of round {round_}: expected dict[str, Tensor], bad keys {bad!r}")
        # own contiguous CPU copies: safetensors refuses tensors that share storage, and the
        # module keeps training while (or after) this is written
        cpu = {
            k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()
        }
        entries = [e for e in self.entries() if e["round"] != round_]  # read first: a bad manifest stops here
        name = self.filename(round_)
        path = self.folder / name
        self._atomic(path, lambda tmp: save_file(cpu, str(tmp)))
        entry = {
            "round": round_,
            "file": name,
            "shapes": {k: list(v.shape) for k, v in sorted(cpu.items())},
            "dtypes": {k: _dtype_name(v.dtype) for k, v in sorted(cpu.items())},
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
        self._write_manifest([*entries, entry])
        return entry

    def _entry(self, round_: int) -> dict:
        entries = self.entries()
        for e in entries:
            if e["round"] == round_:
                return e
        if not self.manifest_path.exists():
            raise SnapshotError(
                f"{self.manifest_path}: missing, no snapshots stored (asked for round {round_})"
            )
        raise SnapshotError(
            f"{self.manifest_path}: no snapshot at round {round_} (stored rounds: {[e['round'] for e in entries]})"
        )

    def _check(self, entry: dict) -> tuple[dict[str, Tensor] | None, list[str]]:
        """Loads one entry's file and lists every way it differs from the manifest."""
        name = entry["file"]
        path = self.folder / name
        if not path.is_file():
            return None, [f"{name}: missing (expected at {path})"]
        data = path.read_bytes()  # one read: the bytes checked are the bytes parsed
        if len(data) != entry["bytes"]:
            return None, [
                f"{name}: size {len(data)} bytes, manifest says {entry['bytes']} bytes (truncated?)"
            ]
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None, [f"{name}: sha256 mismatch (file corrupted?)"]
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            return None, [f"{name}: not a readable safetensors file ({e})"]
        problems = []
        if sorted(tensors) != sorted(entry["shapes"]):
            problems.append(f"{name}: tensors {sorted(tensors)}, manifest lists {sorted(entry['shapes'])}")
        for k, t in sorted(tensors.items()):
            if k in entry["shapes"] and list(t.shape) != entry["shapes"][k]:
                problems.append(f"{name}: {k} has shape {list(t.shape)}, manifest says {entry['shapes'][k]}")
            if k in entry["dtypes"] and _dtype_name(t.dtype) != entry["dtypes"][k]:
                problems.append(
                    f"{name}: {k} has dtype {_dtype_name(t.dtype)}, manifest says {entry['dtypes'][k]}"
                )
        return tensors, problems

    def load(self, round_: int) -> dict[str, Tensor]:
        """The snapshot of ``round_``, verified against the manifest; SnapshotError otherwise."""
        tensors, problems = self._check(self._entry(round_))
        if problems:
            raise SnapshotError("; ".join(problems))
        assert tensors is not None
        return tensors

    def verify(self) -> list[str]:
        """Every problem in the store (empty when all is well); raises nothing."""
        try:
            entries = self.entries()
        except SnapshotError as e:
            return [str(e)]
        problems = []
        for entry in entries:
            problems += self._check(entry)[1]
        listed = {e["file"] for e in entries}
        problems += [f"{p.name}: not in {MANIFEST}" for p in self._snapshot_files() if p.name not in listed]
        return problems

    def rewrite(self, round_: int, fn: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> dict:
        """Replaces a snapshot by ``fn(snapshot)`` (e.g. revoked edges scrubbed from its edge log)."""
        return self.save(round_, fn(self.load(round_)))

    def total_bytes(self) -> int:
        """Bytes on disk of every file in the folder: what keeping the snapshots costs."""
        if not self.folder.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
