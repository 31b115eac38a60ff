"""Unsharing requests: a user revokes some of the (user, item) pairs it shared with the server.

Requests come from a ``user,item`` CSV (:func:`read_requests_csv`) or are drawn from the
shared edges for an experiment (:func:`draw_requests`). :func:`check_requests` compares them
with what the server holds: revoking a pair that was never shared is an error (most likely a
wrong file or id mapping), revoking one that was already revoked is a no-op.

:class:`RequestLedger` makes unlearning resumable. It is an append-only JSON-lines file,
fsync'd after every append, that records each request once and which method has applied
which request; after a crash, ``pending(method)`` is exactly what is left to do. A method
should call ``mark_applied`` only once the effect of that request is saved, and a crash
between the two re-applies that one request, so a method's step must be safe to repeat
(or its checkpoint must hold the ledger's applied ids). One process writes a ledger at a time.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fedshare.atomic import fsync_dir, replace_file

HEADER = "user,item"
EXPECTS = "the header 'user,item', then one pair per line: two non-negative integers 'user,item'"
_INT = re.compile(r"[0-9]+", re.ASCII)
_NEG = re.compile(r"-[0-9]+", re.ASCII)


class RequestError(ValueError):
    """An unsharing request, its file or the ledger is invalid; the message says where and why."""


def _index(value: object, what: str) -> int:
    """``value`` as a non-negative int; bools and floats are rejected (they hide bugs)."""
    if isinstance(value, bool):
        raise RequestError(f"{what} must be a non-negative integer, got {value!r}")
    try:
        i = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise RequestError(f"{what} must be a non-negative integer, got {value!r}") from None
    if i < 0:
        raise RequestError(f"{what} must be a non-negative integer, got {i}")
    return i


@dataclass(frozen=True)
class UnshareRequest:
    """User ``user`` revokes the pairs (user, item) for ``items`` (sorted, unique, non-empty).

    ``lines`` are the source line of each item, kept only for error messages: two requests
    for the same pairs are equal wherever they were read from.
    """

    user: int
    items: tuple[int, ...]
    lines: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        user = _index(self.user, "UnshareRequest.user")
        items = tuple(_index(i, f"UnshareRequest.items of user {user}") for i in self.items)
        lines = tuple(int(n) for n in self.lines)
        if not items:
            raise RequestError(f"UnshareRequest of user {user} has no items; a request revokes at least one")
        if any(a >= b for a, b in zip(items, items[1:])):
            raise RequestError(f"UnshareRequest.items of user {user} must be sorted and unique, got {items}")
        if lines and len(lines) != len(items):
            raise RequestError(f"UnshareRequest.lines has {len(lines)} entries for {len(items)} items")
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "lines", lines)

    def pairs(self) -> tuple[Tensor, Tensor]:
        """(users, items) as int64 tensors of equal length, one entry per revoked pair."""
        items = torch.tensor(self.items, dtype=torch.int64)
        return torch.full_like(items, self.user), items


def _all_pairs(requests: Sequence[UnshareRequest]) -> tuple[Tensor, Tensor]:
    if not requests:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    users, items = zip(*(r.pairs() for r in requests))
    return torch.cat(users), torch.cat(items)


# ----------------------------------------------------------------------------------------------
# CSV


def read_requests_csv(path: str | Path, n_users: int, n_items: int) -> list[UnshareRequest]:
    """Requests of a ``user,item`` CSV, one per user in order of first appearance.

    Blank lines and lines starting with ``#`` are skipped; a pair repeated in the file is one
    request (repeating a request changes nothing). The whole file is validated before
    anything is returned, so a bad line never leaves half of the requests applied.
    """
    path = Path(path)
    n_users = _index(n_users, "n_users")
    n_items = _index(n_items, "n_items")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RequestError(f"{path}: no such requests file; expected a CSV with {EXPECTS}") from None
    except UnicodeDecodeError as e:
        raise RequestError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected {EXPECTS}"
        ) from None

    grouped: dict[int, dict[int, int]] = {}  # user -> item -> first line
    header_seen = False
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if not header_seen:
            if fields != ["user", "item"]:
                raise RequestError(
                    f"{path}:{n}: expected the header 'user,item', got {line!r}; the file holds {EXPECTS}"
                )
            header_seen = True
            continue
        if len(fields) != 2:
            raise RequestError(f"{path}:{n}: expected 2 fields 'user,item', got {len(fields)} in {line!r}")
        user, item = (_csv_int(path, n, name, value) for name, value in zip(("user", "item"), fields))
        if user >= n_users:
            raise RequestError(f"{path}:{n}: unknown user {user}: {_range('users', n_users)}")
        if item >= n_items:
            raise RequestError(f"{path}:{n}: unknown item {item}: {_range('items', n_items)}")
        grouped.setdefault(user, {}).setdefault(item, n)
    if not header_seen:
        raise RequestError(
            f"{path}: missing the header 'user,item' (the file has no other lines); expected {EXPECTS}"
        )
    return [
        UnshareRequest(u, tuple(sorted(lines)), tuple(lines[i] for i in sorted(lines)))
        for u, lines in grouped.items()
    ]


def _csv_int(path: Path, n: int, name: str, value: str) -> int:
    if _INT.fullmatch(value):
        return int(value)
    if _NEG.fullmatch(value):
        raise RequestError(f"{path}:{n}: negative {name} {value}: ids are non-negative integers")
    raise RequestError(f"{path}:{n}: {name} {value!r} is not an integer; ids are non-negative integers")


def _range(what: str, n: int) -> str:
    return f"{what} are 0..{n - 1}" if n else f"there are no {what}"


def write_requests_csv(path: str | Path, requests: Iterable[UnshareRequest]) -> None:
    """Writes ``requests`` as a ``user,item`` CSV that :func:`read_requests_csv` reads back.

    The file is replaced in one ``os.replace``: a crash leaves the old file or the new one.
    Requests of the same user are merged when read back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [HEADER] + [f"{r.user},{i}" for r in requests for i in r.items]
    text = "\n".join(rows) + "\n"
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


# ----------------------------------------------------------------------------------------------
# Checks against the server's graph


def check_requests(
    requests: Sequence[UnshareRequest],
    is_shared: Callable[[Tensor, Tensor], Tensor],
    already_revoked: Callable[[Tensor, Tensor], Tensor] | None = None,
    source: str = "requests",
) -> list[UnshareRequest]:
    """``requests`` without the pairs already revoked, and without requests left empty.

    ``is_shared(users, items)`` and ``already_revoked(users, items)`` answer with one bool
    per pair; both are called once, for all pairs. A pair that is neither shared nor already
    revoked raises a :class:`RequestError` naming ``source`` and the request's line.
    """
    requests = list(requests)
    users, items = _all_pairs(requests)
    if not len(users):
        return []
    shared = _bool_answer(is_shared, "is_shared", users, items)
    revoked = (
        _bool_answer(already_revoked, "already_revoked", users, items)
        if already_revoked is not None
        else torch.zeros_like(shared)
    )
    bad = (~shared & ~revoked).nonzero().flatten().tolist()
    if bad:
        offsets = [0]
        for r in requests:
            offsets.append(offsets[-1] + len(r.items))
        k = bad[0]
        idx = next(j for j in range(len(requests)) if offsets[j + 1] > k)
        req, pos = requests[idx], k - offsets[idx]
        where = f"{source}:{req.lines[pos]}" if req.lines else source
        more = f" (and {len(bad) - 1} more such pairs)" if len(bad) > 1 else ""
        raise RequestError(
            f"{where}: (user {req.user}, item {req.items[pos]}) was never shared with the server{more}; "
            "only shared pairs can be unshared"
        )
    keep = (~revoked).tolist()
    out: list[UnshareRequest] = []
    start = 0
    for r in requests:
        mask = keep[start : start + len(r.items)]
        start += len(r.items)
        items_kept = tuple(i for i, k in zip(r.items, mask) if k)
        if items_kept:
            lines_kept = tuple(n for n, k in zip(r.lines, mask) if k) if r.lines else ()
            out.append(UnshareRequest(r.user, items_kept, lines_kept))
    return out


def _bool_answer(fn: Callable[[Tensor, Tensor], Tensor], name: str, users: Tensor, items: Tensor) -> Tensor:
    answer = fn(users, items)
    if not isinstance(answer, Tensor) or answer.dtype != torch.bool or answer.shape != users.shape:
        got = (
            f"{answer.dtype} tensor of shape {tuple(answer.shape)}"
            if isinstance(answer, Tensor)
            else type(answer)
        )
        raise TypeError(
            f"{name}(users, items) must return a bool tensor of shape {tuple(users.shape)}, got {got}"
        )
    return answer.cpu()


# ----------------------------------------------------------------------------------------------
# Drawn requests


def _fraction(value: object, key: str, allow_zero: bool) -> float:
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0 <= value if allow_zero else 0 < value) and value <= 1):  # type: ignore[operator]
        raise RequestError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def draw_requests(
    edge_users: Tensor, edge_items: Tensor, user_fraction: float, item_fraction: float, seed: int
) -> list[UnshareRequest]:
    """Random requests for an experiment, sorted by user.

    ``round(user_fraction * n)`` of the n sharing users (at least one), uniformly; each
    revokes ``max(1, round(item_fraction * |S_u|))`` of its shared items S_u, uniformly. The
    draw depends only on the set of shared pairs and ``seed``, not on the order of the edges.
    """
    uf = _fraction(user_fraction, "unlearn.requests.user_fraction", allow_zero=False)
    itf = _fraction(item_fraction, "unlearn.requests.item_fraction", allow_zero=True)
    seed = operator.index(seed)
    for name, t in (("edge_users", edge_users), ("edge_items", edge_items)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise RequestError(f"{name} must be a 1-D integer tensor")
    if edge_users.shape != edge_items.shape:
        raise RequestError(
            f"edge_users ({len(edge_users)}) and edge_items ({len(edge_items)}) differ in length"
        )
    if not len(edge_users):
        return []
    stacked = torch.stack([edge_users.cpu(), edge_items.cpu()], 1).long()
    pairs = torch.unique(stacked, dim=0)  # unique, sorted by (user, item)
    if (pairs < 0).any():
        raise RequestError("edge_users and edge_items must be non-negative ids")
    users, items = pairs[:, 0], pairs[:, 1]
    sharing, counts = torch.unique_consecutive(users, return_counts=True)
    n = len(sharing)
    g = torch.Generator().manual_seed(seed)
    k = min(n, max(1, round(uf * n)))
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=g)[:k]] = True
    take = torch.round(itf * counts.double()).long().clamp(min=1)
    # Random order within each user: sort by a random key, then stably by user.
    by_key = torch.argsort(torch.rand(len(users), generator=g, dtype=torch.float64))
    order = by_key[torch.sort(users[by_key], stable=True).indices]
    group = torch.repeat_interleave(torch.arange(n), counts)
    rank = torch.arange(len(users)) - (torch.cumsum(counts, 0) - counts)[group]
    picked = order[chosen[group] & (rank < take[group])]
    picked = picked.sort().values  # back to (user, item) order
    out: list[UnshareRequest] = []
    start = 0
    for u, m in zip(sharing[chosen].tolist(), take[chosen].tolist()):
        out.append(UnshareRequest(u, tuple(items[picked[start : start + m]].tolist())))
        start += m
    return out


# ----------------------------------------------------------------------------------------------
# Ledger


class RequestLedger:
    """Append-only JSON-lines record of requests and of which method applied which request.

    Entries: ``{"kind": "request", "id": k, "user": u, "items": [...]}`` and
    ``{"kind": "applied", "method": m, "id": k, ...info}``; after `compact`, a finished
    request is ``{"kind": "closed", "id": k, "user": u, "n_items": n}``: its items are gone. Every append is flushed and
    fsync'd before the call returns, so what a call reported done survives a crash. A crash
    during a write leaves at most a torn last line; opening the ledger drops it (with a
    warning) and truncates the file back to its last complete line.

    Opening a ledger that does not exist yet creates nothing: the file (and its folder) appear
    with the first entry written, so a session whose requests are refused leaves the run
    folder as it was.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._requests: dict[int, UnshareRequest] = {}
        self._ids: dict[UnshareRequest, int] = {}
        self._applied: dict[str, dict[int, int]] = {}  # method -> id -> ledger line
        self._closed: dict[int, tuple[int, int]] = {}  # compacted requests: id -> (user, n_items)
        self._applied_entries: list[dict] = []  # as written, for compact()
        self._n_lines = 0
        if self.path.exists():
            self._replay()

    def _replay(self) -> None:
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")
        good = 0  # bytes of complete, valid lines
        for n, raw in enumerate(complete, start=1):
            entry = _parse(raw)
            if entry is None:
                if n == len(complete) and not tail:
                    self._drop_torn(n, raw, good)
                    return
                raise RequestError(
                    f"{self.path}:{n}: not a ledger entry: {_snippet(raw)}; the ledger is JSON lines "
                    "written by RequestLedger (a 'request' or 'applied' object per line)"
                )
            self._apply(entry, f"{self.path}:{n}")
            self._n_lines = n
            good += len(raw) + 1
        if tail:
            self._drop_torn(len(complete) + 1, tail, good)

    def _drop_torn(self, n: int, raw: bytes, keep: int) -> None:
        warnings.warn(
            f"{self.path}:{n}: dropped an incomplete last line (a crash during a write?): {_snippet(raw)}",
            stacklevel=4,  # the caller of RequestLedger(...)
        )
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def _apply(self, entry: dict, where: str, record: bool = True) -> None:
        """Checks one entry against the ledger so far and, if ``record``, records it in memory."""
        kind = entry.get("kind")
        if kind == "request":
            if set(entry) != {"kind", "id", "user", "items"}:
                raise RequestError(
                    f"{where}: a request entry has the keys kind, id, user, items; got {sorted(entry)}"
                )
            if type(entry["id"]) is not int or entry["id"] != self._next_id():
                raise RequestError(
                    f"{where}: request id {entry['id']!r} out of order; expected {self._next_id()}"
                )
            if not isinstance(entry["items"], list):
                raise RequestError(f"{where}: items must be a list of item ids, got {entry['items']!r}")
            try:
                req = UnshareRequest(entry["user"], tuple(entry["items"]))
            except RequestError as e:
                raise RequestError(f"{where}: {e}") from None
            if req in self._ids:
                raise RequestError(f"{where}: request {entry['id']} repeats request {self._ids[req]}")
            if not record:
                return
            self._requests[entry["id"]] = req
            self._ids[req] = entry["id"]
        elif kind == "closed":
            if set(entry) != {"kind", "id", "user", "n_items"}:
                raise RequestError(
                    f"{where}: a closed entry has the keys kind, id, user, n_items; got {sorted(entry)}"
                )
            if type(entry["id"]) is not int or entry["id"] != self._next_id():
                raise RequestError(
                    f"{where}: request id {entry['id']!r} out of order; expected {self._next_id()}"
                )
            if record:
                self._closed[entry["id"]] = (int(entry["user"]), int(entry["n_items"]))
        elif kind == "applied":
            method, k = entry.get("method"), entry.get("id")
            if not isinstance(method, str) or not method:
                raise RequestError(f"{where}: method must be a non-empty string, got {method!r}")
            if type(k) is not int or (k not in self._requests and k not in self._closed):
                raise RequestError(
                    f"{where}: unknown request id {k!r}; recorded ids are {_ids_text(self._requests)}"
                )
            done = self._applied.get(method, {})
            if k in done:
                raise RequestError(
                    f"{where}: request {k} was already applied by method {method!r} "
                    f"({self.path}:{done[k]}); applying it twice would unlearn it twice"
                )
            if record:
                self._applied.setdefault(method, {})[k] = self._n_lines + 1
                self._applied_entries.append(entry)
        else:
            raise RequestError(
                f"{where}: unknown entry kind {kind!r}; entries are 'request', 'applied' or 'closed'"
            )

    def _next_id(self) -> int:
        return len(self._requests) + len(self._closed)

    def _append(self, entries: list[dict]) -> None:
        """Checks, writes and fsyncs ``entries``, one line each, then records them."""
        lines = []
        for e in entries:
            try:
                lines.append(json.dumps(e, allow_nan=False))
            except (TypeError, ValueError) as err:
                raise RequestError(f"ledger entry {e!r} is not JSON-serialisable: {err}") from None
        created = not self.path.exists()
        if created:  # the first entry: only now does the ledger exist on disk
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write("".join(line + "\n" for line in lines).encode())
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.path.parent)  # the new file's name survives a crash too
        for e in entries:
            self._apply(e, f"{self.path}:{self._n_lines + 1}")
            self._n_lines += 1

    def add(self, requests: Iterable[UnshareRequest]) -> list[int]:
        """Records ``requests``; returns their ids. A request already recorded keeps its id."""
        ids: list[int] = []
        new: list[dict] = []
        pending: dict[UnshareRequest, int] = {}
        for r in requests:
            if not isinstance(r, UnshareRequest):
                raise RequestError(f"RequestLedger.add takes UnshareRequest objects, got {type(r).__name__}")
            key = UnshareRequest(r.user, r.items)  # without lines: the ledger does not keep them
            k = self._ids.get(key, pending.get(key))
            if k is None:
                k = pending[key] = self._next_id() + len(new)
                new.append({"kind": "request", "id": k, "user": key.user, "items": list(key.items)})
            ids.append(k)
        if new:
            self._append(new)
        return ids

    def requests(self) -> dict[int, UnshareRequest]:
        """Every recorded request by id."""
        return dict(self._requests)

    def mark_applied(self, method: str, request_id: int, **info: object) -> None:
        """Records that ``method`` has applied request ``request_id``; ``info`` is kept with it."""
        clash = {"kind", "method", "id"} & set(info)
        if clash:
            raise RequestError(f"mark_applied info cannot use the reserved keys {sorted(clash)}")
        entry = {"kind": "applied", "method": method, "id": request_id, **info}
        self._apply(entry, f"mark_applied({method!r}, {request_id!r})", record=False)  # before writing
        self._append([entry])

    def applied(self, method: str) -> set[int]:
        """Ids of the requests ``method`` has applied."""
        return set(self._applied.get(method, {}))

    def pending(self, method: str) -> list[tuple[int, UnshareRequest]]:
        """Recorded requests ``method`` has not applied yet, in id order."""
        done = self._applied.get(method, {})
        return [(k, r) for k, r in sorted(self._requests.items()) if k not in done]

    def compact(self) -> None:
        """Forgets the items of every open request: each becomes a ``closed`` entry (id, user,
        count). Call it when every method has applied them and the server's files are scrubbed:
        the ledger then names no revoked pair. The file is replaced atomically."""
        closed = dict(self._closed)
        closed.update({k: (r.user, len(r.items)) for k, r in self._requests.items()})
        lines = [
            {"kind": "closed", "id": k, "user": u, "n_items": n} for k, (u, n) in sorted(closed.items())
        ] + self._applied_entries
        text = "".join(json.dumps(e, allow_nan=False) + "\n" for e in lines)
        replace_file(self.path, lambda tmp: tmp.write_bytes(text.encode()))
        self._closed, self._requests, self._ids = closed, {}, {}
        self._n_lines = len(lines)
        self._applied = {}
        for n, e in enumerate(self._applied_entries, start=len(closed) + 1):
            self._applied.setdefault(e["method"], {})[e["id"]] = n

    def closed(self) -> dict[int, tuple[int, int]]:
        """Compacted requests: id -> (user, number of items)."""
        return dict(self._closed)

    def revoked_pairs(self) -> tuple[Tensor, Tensor]:
        """(users, items) of every open (not compacted) request, sorted by (user, item), unique."""
        users, items = _all_pairs(list(self._requests.values()))
        if not len(users):
            return users, items
        pairs = torch.unique(torch.stack([users, items], 1), dim=0)
        return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()


def _parse(raw: bytes) -> dict | None:
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _ids_text(requests: dict[int, UnshareRequest]) -> str:
    return f"0..{len(requests) - 1}" if requests else "none yet"
