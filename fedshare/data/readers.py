"""Readers for the public file formats of recommendation datasets.

Each reader returns the raw columns of one file (:class:`RawColumns`): ids exactly as the
file spells them, plus ratings and times where the format has them. Thresholds, k-core,
id remapping and splitting happen later, in :mod:`fedshare.data.datasets`.

Every reader parses with a vectorized fast path (pandas or numpy). When the fast path
rejects the file, a line-by-line scan runs instead: it is the reference parser, so it either
raises a :class:`DatasetError` that names the file, the 1-based line number and what the
format expects, or returns what the fast path could not (e.g. trailing separators).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd


class DatasetError(ValueError):
    """A dataset cannot be read, located or configured; the message says where and why."""


@dataclass(frozen=True)
class RawColumns:
    """Interactions of one file as parallel arrays, ids as the file spells them."""

    users: np.ndarray  # int64, or str for formats whose ids are not numeric
    items: np.ndarray
    ratings: np.ndarray | None = None  # float64
    times: np.ndarray | None = None  # float64: unix time, or position in a sequence

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "ratings", "times"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise ValueError(f"{name} ({len(col)}) and users ({n}) differ in length")

    def __len__(self) -> int:
        return len(self.users)


# What each format expects, quoted in every parse error.
EXPECTS = {
    "ml100k": "4 tab-separated fields per line: user id (integer), item id (integer), "
    "rating (number), unix time (number)",
    "ml1m": "user::item::rating::time per line, with integer ids and a numeric rating and time",
    "lightgcn": "one user per line: an integer user id followed by zero or more integer item ids, "
    "separated by whitespace",
    "pairs": "'user item [weight]' per line: integer ids and an optional numeric weight, tab- or "
    "space-separated, with the same number of fields on every line",
    "sequence": "one user per line: an integer user id followed by the user's integer item ids "
    "in time order, separated by whitespace",
    "csv": "a header row naming the columns, then one interaction per row",
}

_QUOTE_LEN = 80


def _quote(line: str) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= _QUOTE_LEN else line[:_QUOTE_LEN] + "...")


def _line_error(path: Path, lineno: int, line: str, problem: str, fmt: str) -> DatasetError:
    return DatasetError(
        f"{path}, line {lineno}: {problem} in {_quote(line)}; the {fmt} format expects {EXPECTS[fmt]}"
    )


def _lines(path: Path, fmt: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every line, decoded one by one so a bad byte has a line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", "replace")
                raise _line_error(path, lineno, text, f"not UTF-8 text ({exc.reason})", fmt) from None


def _split(line: str, sep: str | None) -> list[str]:
    # Surrounding whitespace (trailing spaces, '\r' of Windows files) is never part of a field.
    line = line.strip()
    if not line:
        return []
    return line.split(sep) if sep else line.split()


def _parse_int(tok: str) -> int:
    value = int(tok)  # accepts ' 12', rejects '1.5', 'x', ''
    if not -(2**63) <= value < 2**63:
        raise ValueError(tok)
    return value


def _parse_float(tok: str) -> float:
    value = float(tok)
    if not math.isfinite(value):
        raise ValueError(tok)
    return value


# ----------------------------------------------------------------------------------------------
# Fixed fields per line: ml100k, ml1m, pairs


@dataclass(frozen=True)
class _Field:
    name: str  # user, item, rating or time
    integer: bool


_ML_FIELDS = (_Field("user", True), _Field("item", True), _Field("rating", False), _Field("time", False))
_PAIR_FIELDS = (_Field("user", True), _Field("item", True), _Field("rating", False))


def _columns_from(cols: dict[str, np.ndarray]) -> RawColumns:
    return RawColumns(
        users=cols["user"].astype(np.int64),
        items=cols["item"].astype(np.int64),
        ratings=cols["rating"].astype(np.float64) if "rating" in cols else None,
        times=cols["time"].astype(np.float64) if "time" in cols else None,
    )


def _fast_fields(
    path: Path, sep: str | None, fields: tuple[_Field, ...], n_min: int
) -> dict[str, np.ndarray] | None:
    """Parse with pandas' C engine; None when anything looks off (the scan then decides)."""
    source: Path | io.BytesIO = path
    if sep is None:
        pd_sep = r"\s+"  # the C engine special-cases this: any run of spaces/tabs
    elif len(sep) == 1:
        pd_sep = sep
    else:
        # Multi-character separators ('::') would force pandas' slow Python engine; the ids and
        # numbers never contain a tab, so swapping the separator for one keeps the C engine.
        source = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t"))
        pd_sep = "\t"
    try:
        df = pd.read_csv(source, sep=pd_sep, header=None, engine="c", quoting=csv.QUOTE_NONE)
    except pd.errors.EmptyDataError:
        return {f.name: np.zeros(0, np.int64 if f.integer else np.float64) for f in fields}
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    if not n_min <= df.shape[1] <= len(fields):
        return None
    cols: dict[str, np.ndarray] = {}
    for k, field in enumerate(fields[: df.shape[1]]):
        col = df.iloc[:, k].to_numpy()
        if field.integer and col.dtype.kind not in "iu":
            return None
        if not field.integer and (col.dtype.kind not in "iuf" or not np.isfinite(col).all()):
            return None
        cols[field.name] = col
    return cols


def _scan_fields(
    path: Path, sep: str | None, fields: tuple[_Field, ...], n_min: int, fmt: str
) -> dict[str, np.ndarray]:
    """Reference parser: line by line, raising at the first malformed line."""
    rows: list[list[float | int]] = []
    n_fields: int | None = None  # fixed by the first non-blank line
    first_line = 0
    for lineno, line in _lines(path, fmt):
        toks = _split(line, sep)
        if not toks:
            continue
        if n_fields is None:
            if not n_min <= len(toks) <= len(fields):
                want = str(len(fields)) if n_min == len(fields) else f"{n_min} to {len(fields)}"
                raise _line_error(path, lineno, line, f"{len(toks)} fields instead of {want}", fmt)
            n_fields, first_line = len(toks), lineno
        elif len(toks) != n_fields:
            raise _line_error(
                path, lineno, line, f"{len(toks)} fields where line {first_line} has {n_fields}", fmt
            )
        row: list[float | int] = []
        for tok, field in zip(toks, fields):
            try:
                row.append(_parse_int(tok) if field.integer else _parse_float(tok))
            except ValueError:
                kind = "an integer" if field.integer else "a finite number"
                raise _line_error(path, lineno, line, f"{field.name} {tok!r} is not {kind}", fmt) from None
        rows.append(row)
    n_fields = n_fields or n_min
    table = np.array(rows, dtype=np.float64).reshape(len(rows), n_fields)
    cols: dict[str, np.ndarray] = {}
    for k, field in enumerate(fields[:n_fields]):
        if field.integer:
            # Through float64 would round ids above 2**53; rebuild integer columns exactly.
            cols[field.name] = np.fromiter((r[k] for r in rows), np.int64, len(rows))
        else:
            cols[field.name] = table[:, k]
    return cols


def _read_fields(
    path: str | Path, sep: str | None, fields: tuple[_Field, ...], n_min: int, fmt: str
) -> RawColumns:
    path = Path(path)
    cols = _fast_fields(path, sep, fields, n_min)
    if cols is None:
        cols = _scan_fields(path, sep, fields, n_min, fmt)
    return _columns_from(cols)


def read_ml100k(path: str | Path, sep: str | None = None) -> RawColumns:
    """MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>unix-time`` per line."""
    return _read_fields(path, "\t" if sep is None else sep, _ML_FIELDS, len(_ML_FIELDS), "ml100k")


def read_ml1m(path: str | Path, sep: str | None = None) -> RawColumns:
    """MovieLens-1M ``ratings.dat``: ``user::item::rating::time`` per line."""
    return _read_fields(path, "::" if sep is None else sep, _ML_FIELDS, len(_ML_FIELDS), "ml1m")


def read_pairs(path: str | Path, sep: str | None = None) -> RawColumns:
    """``user item [weight]`` per line (Last.fm ``data1.txt``); the weight becomes the rating."""
    return _read_fields(path, sep, _PAIR_FIELDS, 2, "pairs")


# ----------------------------------------------------------------------------------------------
# One user per line: lightgcn, sequence


def _fast_rows(path: Path, sep: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens per non-blank line, all tokens as int64), or None if a token is not an integer."""
    data = path.read_bytes()
    bsep = sep.encode() if sep else None
    parts = [
        p
        for p in (ln.strip().split(bsep) if bsep else ln.split() for ln in data.splitlines())
        if p != [] and p != [b""]
    ]
    counts = np.fromiter(map(len, parts), np.int64, len(parts))
    try:
        # numpy parses the byte strings in C: several times faster than int() per token.
        tokens = np.array(list(chain.from_iterable(parts))).astype(np.int64)
    except (ValueError, OverflowError, UnicodeDecodeError):
        return None
    if tokens.ndim != 1 or len(tokens) != counts.sum():
        return None
    return counts, tokens


def _scan_rows(path: Path, sep: str | None, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    counts: list[int] = []
    tokens: list[int] = []
    for lineno, line in _lines(path, fmt):
        toks = _split(line, sep)
        if not toks or toks == [""]:
            continue
        for k, tok in enumerate(toks):
            try:
                tokens.append(_parse_int(tok))
            except ValueError:
                what = "user id" if k == 0 else f"item id {k}"
                raise _line_error(path, lineno, line, f"{what} {tok!r} is not an integer", fmt) from None
        counts.append(len(toks))
    return np.array(counts, np.int64), np.array(tokens, np.int64)


def _read_rows(path: str | Path, sep: str | None, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, position of each item in its line) of a one-user-per-line file."""
    path = Path(path)
    parsed = _fast_rows(path, sep)
    counts, tokens = parsed if parsed is not None else _scan_rows(path, sep, fmt)
    starts = np.cumsum(counts) - counts
    n_items = counts - 1  # a line may hold just its user id
    is_item = np.ones(len(tokens), bool)
    is_item[starts] = False
    users = np.repeat(tokens[starts], n_items)
    items = tokens[is_item]
    positions = np.arange(len(items)) - np.repeat(np.cumsum(n_items) - n_items, n_items)
    return users, items, positions


def read_lightgcn(path: str | Path, sep: str | None = None) -> RawColumns:
    """LightGCN ``train.txt``/``test.txt``: ``u i1 i2 ...`` per line; no ratings, no times."""
    users, items, _ = _read_rows(path, sep, "lightgcn")
    return RawColumns(users, items)


def read_sequence(path: str | Path, sep: str | None = None) -> RawColumns:
    """Per-user sequences in time order (SASRec ``Beauty.txt``); time = position in the sequence.

    A user spread over several lines continues its sequence: positions count per user, in
    file order, so the times stay a valid order within each user.
    """
    users, items, _ = _read_rows(path, sep, "sequence")
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    first = np.r_[True, sorted_users[1:] != sorted_users[:-1]] if len(users) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0)) if len(users) else first
    positions = np.empty(len(users), np.float64)
    positions[order] = np.arange(len(users)) - start
    return RawColumns(users, items, times=positions)


# ----------------------------------------------------------------------------------------------
# Generic CSV


def _csv_error(path: Path, sep: str, header: list[str], key: str, name: str, numeric: bool) -> DatasetError:
    """Locate the first row whose ``name`` column is empty (or, if ``numeric``, not a number)."""
    col = header.index(name)
    vague = DatasetError(f"{path}: column {name!r} (data.columns.{key}) has empty or non-numeric values")
    if len(sep) != 1:  # pandas reads longer separators as regexes; the csv module cannot follow
        return vague
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=sep)
        next(reader, None)
        for row in reader:
            value = row[col].strip() if col < len(row) else ""
            problem = None
            if not value:
                problem = f"{key} column {name!r} is empty"
            elif numeric:
                try:
                    _parse_float(value)
                except ValueError:
                    problem = f"{key} column {name!r} holds {value!r}, not a finite number"
            if problem:
                line = sep.join(row)
                return DatasetError(
                    f"{path}, line {reader.line_num}: {problem} in {_quote(line)}; "
                    f"the csv format expects {EXPECTS['csv']}, with numbers in the rating and time columns"
                )
    return vague


def read_csv(path: str | Path, columns: Mapping[str, str | None], sep: str | None = None) -> RawColumns:
    """CSV with a header row; ``columns`` maps ``user``, ``item`` and optional ``rating``,
    ``time`` to header names. Ids keep the type pandas infers (integers, else strings)."""
    path = Path(path)
    sep = "," if sep is None else sep
    accepted = ("user", "item", "rating", "time")
    unknown = sorted(set(columns) - set(accepted))
    if unknown:
        raise DatasetError(f"data.columns has unknown keys {unknown}; accepted: {list(accepted)}")
    wanted = {key: columns.get(key) for key in accepted if columns.get(key) is not None}
    for key in ("user", "item"):
        if key not in wanted:
            raise DatasetError(
                f"data.columns.{key} is required for the csv format (the header name of the {key} column)"
            )
    try:
        header = [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty; the csv format expects {EXPECTS['csv']}") from None
    for key, name in wanted.items():
        if name not in header:
            raise DatasetError(
                f"{path}: no column {name!r} (data.columns.{key}); the header has {header}: "
                f"set data.columns.{key} to one of them"
            )
    try:
        df = pd.read_csv(path, sep=sep, usecols=list(dict.fromkeys(wanted.values())))
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: cannot parse as csv with sep={sep!r}: {exc}") from None
    out: dict[str, np.ndarray] = {}
    for key, name in wanted.items():
        col = df[name]
        numeric = key in ("rating", "time")
        if col.isna().any() or (numeric and (col.dtype.kind not in "iuf" or not np.isfinite(col).all())):
            raise _csv_error(path, sep, header, key, name, numeric)
        if numeric:
            out[key] = col.to_numpy(np.float64)
        elif col.dtype.kind in "iu":
            out[key] = col.to_numpy(np.int64)
        else:
            # Mixed or textual ids: compare them as text, so '7' and 7 are one id.
            out[key] = col.astype(str).to_numpy(dtype=str)
    return RawColumns(out["user"], out["item"], out.get("rating"), out.get("time"))


# ----------------------------------------------------------------------------------------------

Reader = Callable[..., RawColumns]

READERS: dict[str, Reader] = {
    "ml100k": read_ml100k,
    "ml1m": read_ml1m,
    "lightgcn": read_lightgcn,
    "pairs": read_pairs,
    "sequence": read_sequence,
    "csv": read_csv,
}


def read_file(
    fmt: str, path: str | Path, sep: str | None = None, columns: Mapping[str, str | None] | None = None
) -> RawColumns:
    """Read ``path`` with the reader of format ``fmt`` (a key of :data:`READERS`)."""
    if fmt not in READERS:
        raise DatasetError(f"unknown data.format {fmt!r}; accepted: {sorted(READERS)}")
    if fmt == "csv":
        if columns is None:
            raise DatasetError(
                "data.columns is required for the csv format (user, item[, rating, time] column names)"
            )
        return read_csv(path, columns, sep)
    return READERS[fmt](path, sep)
