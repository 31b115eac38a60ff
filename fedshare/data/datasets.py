"""Load a dataset described by a ``configs/data/*.yaml`` config into :class:`InteractionData`.

Pipeline: locate (and, if configured, download) files -> read -> implicit threshold ->
drop duplicate (user, item) pairs -> k-core -> remap ids to 0..n-1 -> split.

Ids are remapped in sorted raw-id order over all splits together, so a dataset whose raw ids
are already 0..n-1 (the LightGCN splits) keeps them, and published numbers stay comparable.

Every step is linear in the interactions and builds no users x items array, so the
million-user synthetic preset (``data=synthetic-1m``, 50M interactions) loads in a few GB;
steps that would copy a column for nothing (a single file, k-core off, no duplicates) skip it.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from fedshare.atomic import sha256_file
from fedshare.data.interactions import InteractionData, Split
from fedshare.data.readers import EXPECTS, READERS, DatasetError, RawColumns, read_file

__all__ = [
    "DatasetError",
    "ROOT_ENV",
    "DEFAULT_ROOT",
    "SYNTHETIC_KNOBS",
    "check_config",
    "dataset_dir",
    "locate_files",
    "load_dataset",
    "generate_synthetic",
    "split_by_ratio",
    "kcore_mask",
]

ROOT_ENV = "FEDSHARE_DATA"
DEFAULT_ROOT = "~/.cache/fedshare/datasets"

FORMATS = (*sorted(READERS), "synthetic")
SPLIT_MODES = ("ratio", "given")
GIVEN_ROLES = ("train", "valid", "test")
ARCHIVES = ("zip",)

# The accepted keys, names only: every value, defaults included, lives in configs/data/*.yaml,
# and a composed config has every key (a missing one is an error, never filled in here).
_KEYS = (
    "name",
    "format",
    "root",
    "path",
    "files",
    "sep",
    "columns",
    "implicit_threshold",
    "kcore",
    "split",
    "download",
    "synthetic",
)
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "split": ("mode", "ratios", "valid_ratio"),
    "download": ("url", "archive", "sha256", "source"),
}
# The knobs of data.synthetic that generate_synthetic reads (values: configs/data/synthetic.yaml).
SYNTHETIC_KNOBS = (
    "seed",
    "n_users",
    "n_items",
    "n_interactions",
    "n_communities",
    "affinity",
    "popularity_exponent",
    "min_user_interactions",
    "activity_sigma",
    "time_start",
    "time_span_days",
)

# Stream tags: each purpose gets its own generator, so adding a draw in one never shifts another.
_SPLIT_STREAM = 0x5911
_SYNTHETIC_STREAM = 0x5947

_TRAIN, _VALID, _TEST = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# Config


def _missing(where: str, names: Sequence[str]) -> DatasetError:
    listed = ", ".join(f"{where}.{name}" for name in names)
    return DatasetError(
        f"{listed} {'is' if len(names) == 1 else 'are'} missing; the code fills in no defaults: every "
        f"key is set in configs/data/*.yaml, so compose the config (fedshare.config.compose) or start "
        f"from one of those files"
    )


def _config(data_cfg: Any) -> dict[str, Any]:
    """A plain, validated dict; every key must be present (the YAML holds them all)."""
    # DictConfig is a Mapping too, but its nested nodes must become plain containers as well.
    raw = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
    if not isinstance(raw, Mapping):
        raise DatasetError(
            f"data config must be a mapping or an OmegaConf DictConfig, got {type(data_cfg).__name__}"
        )
    cfg = copy.deepcopy(dict(raw))
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise DatasetError(f"unknown data config keys {unknown}; accepted: {sorted(_KEYS)}")
    missing = [key for key in _KEYS if key not in cfg]
    if missing:
        raise _missing("data", missing)
    for key, accepted in _SECTION_KEYS.items():
        value = cfg[key]
        if not isinstance(value, Mapping):
            raise DatasetError(f"data.{key} must be a mapping, got {value!r}")
        sub_unknown = sorted(set(value) - set(accepted))
        if sub_unknown:
            raise DatasetError(f"unknown keys {sub_unknown} in data.{key}; accepted: {sorted(accepted)}")
        sub_missing = [name for name in accepted if name not in value]
        if sub_missing:
            raise _missing(f"data.{key}", sub_missing)
        cfg[key] = dict(value)
    if not cfg["name"] or not isinstance(cfg["name"], str):
        raise DatasetError(
            f"data.name must be a non-empty string (the dataset folder name), got {cfg['name']!r}"
        )
    if cfg["format"] not in FORMATS:
        raise DatasetError(f"data.format is {cfg['format']!r}; accepted: {list(FORMATS)}")
    if cfg["columns"] is not None and cfg["format"] != "csv":
        raise DatasetError(
            f"data.columns is only read by the csv format; set it to null for format {cfg['format']!r}"
        )
    kcore = cfg["kcore"]
    if isinstance(kcore, bool) or not isinstance(kcore, int) or kcore < 0:
        raise DatasetError(f"data.kcore must be an integer >= 0 (0 disables the filter), got {kcore!r}")
    threshold = cfg["implicit_threshold"]
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise DatasetError(f"data.implicit_threshold must be a number or null, got {threshold!r}")
    _check_split(cfg["split"])
    _check_path(cfg)
    return cfg


def _check_path(cfg: dict[str, Any]) -> None:
    path = cfg["path"]
    if path is None:
        return
    if isinstance(path, int) and not isinstance(path, bool):  # data.path=2024: a file named 2024
        path = cfg["path"] = str(path)
    if not isinstance(path, str) or not path.strip():
        raise DatasetError(
            f"data.path must be the path of one interaction file (a string) or null, got {path!r}"
        )
    if cfg["format"] == "synthetic":
        raise DatasetError("data.path is not read by the synthetic format; set it to null or pick data=csv")
    if cfg["split"]["mode"] != "ratio":
        raise DatasetError(
            f"data.path names one file, split at random per user: data.split.mode must be ratio, "
            f"got {cfg['split']['mode']!r}. For a dataset's own train/test files use data.files "
            f"(in <data.root>/<data.name>/) and data.path=null"
        )


def check_config(data_cfg: Any) -> None:
    """Raises :class:`DatasetError` for a data config that ``load_dataset`` would refuse."""
    _config(data_cfg)


def _check_split(split: dict[str, Any]) -> None:
    if split["mode"] not in SPLIT_MODES:
        raise DatasetError(f"data.split.mode is {split['mode']!r}; accepted: {list(SPLIT_MODES)}")
    ratios = split["ratios"]
    if split["mode"] == "ratio":
        ok = isinstance(ratios, Sequence) and not isinstance(ratios, str) and len(ratios) == 3
        ok = ok and all(isinstance(r, int | float) and not isinstance(r, bool) and r >= 0 for r in ratios)
        if not ok:
            raise DatasetError(
                f"data.split.ratios must be [train, valid, test], 3 numbers >= 0, got {ratios!r}"
            )
        if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise DatasetError(f"data.split.ratios {list(ratios)} sum to {sum(ratios):g}; they must sum to 1")
        if ratios[0] <= 0:
            raise DatasetError(f"data.split.ratios {list(ratios)}: the train share must be > 0")
    valid_ratio = split["valid_ratio"]
    if not isinstance(valid_ratio, int | float) or isinstance(valid_ratio, bool) or not 0 <= valid_ratio < 1:
        raise DatasetError(f"data.split.valid_ratio must be a number in [0, 1), got {valid_ratio!r}")


def _required_files(cfg: dict[str, Any]) -> dict[str, str]:
    """role -> file name, null roles dropped; checks the roles the split mode needs."""
    files = cfg["files"] or {}
    if not isinstance(files, Mapping) or not all(isinstance(v, str) or v is None for v in files.values()):
        raise DatasetError(f"data.files must map a role to a file name (or null), got {files!r}")
    files = {role: name for role, name in files.items() if name is not None}
    if cfg["split"]["mode"] == "given":
        missing = [role for role in ("train", "test") if role not in files]
        extra = sorted(set(files) - set(GIVEN_ROLES))
        if missing or extra:
            raise DatasetError(
                f"data.split.mode=given reads data.files.train, data.files.test and optionally "
                f"data.files.valid; dataset {cfg['name']!r} has files {dict(files)}. "
                f"Use data.split.mode=ratio for a single interaction file."
            )
    elif not files:
        raise DatasetError(
            f"no file to read for dataset {cfg['name']!r} (format {cfg['format']!r}): set data.path to "
            f"one interaction file (e.g. data=csv data.path=FILE), or name the files in data.files"
        )
    return files


# ----------------------------------------------------------------------------------------------
# Locating and downloading files


def dataset_dir(data_cfg: Any) -> Path:
    """``<root>/<name>``: root is ``data.root``, else ``$FEDSHARE_DATA``, else ``~/.cache/fedshare/datasets``."""
    cfg = _config(data_cfg)
    root = cfg["root"] or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return (Path(os.path.expandvars(str(root))).expanduser() / cfg["name"]).absolute()


def locate_files(data_cfg: Any, download: bool = True) -> dict[str, Path]:
    """role -> path of every file the config needs, downloading missing ones if allowed.

    ``data.path`` set: that one file (role ``ratings``), as given; it is never downloaded.
    Only fetches; never parses. Raises :class:`DatasetError` naming the missing files, the
    folder they belong in, where to get them and why a download failed.
    """
    cfg = _config(data_cfg)
    if cfg["format"] == "synthetic":
        return {}
    if cfg["path"] is not None:
        return {"ratings": _user_file(cfg)}
    folder = dataset_dir(cfg)
    files = _required_files(cfg)
    missing = [name for name in dict.fromkeys(files.values()) if not (folder / name).is_file()]
    if missing:
        dl = cfg["download"]
        if not dl["url"] or not download:
            reason = (
                "no download URL is configured (data.download.url is null)"
                if download
                else "downloads are off"
            )
            raise _missing_error(cfg, folder, missing, reason)
        try:
            _download(folder, missing, dl)
        except (OSError, DatasetError, zipfile.BadZipFile, urllib.error.URLError, ValueError) as exc:
            raise _missing_error(cfg, folder, missing, f"the download failed: {exc}") from exc
    return {role: folder / name for role, name in files.items()}


def _user_file(cfg: dict[str, Any]) -> Path:
    """``data.path``: one file the user names; never downloaded, root and files not read."""
    path = Path(os.path.expandvars(cfg["path"])).expanduser().absolute()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DatasetError(
            f"data.path={cfg['path']!r}: {path} {what}. data.path takes one interaction file, absolute "
            f"or relative to the working folder ({Path.cwd()}); the {cfg['format']} format expects "
            f"{EXPECTS[cfg['format']]}"
        )
    return path


def _missing_error(cfg: dict[str, Any], folder: Path, missing: list[str], reason: str) -> DatasetError:
    dl = cfg["download"]
    where = []
    if dl["url"]:
        url = dl["url"]
        where.append(
            f"{url}<file name>" if url.endswith("/") else url + (" (zip archive)" if dl["archive"] else "")
        )
    if dl["source"]:
        where.append(str(dl["source"]))
    return DatasetError(
        f"dataset {cfg['name']!r} is missing {', '.join(missing)} in {folder}. "
        f"Put the files in that folder (or point data.root or ${ROOT_ENV} at a folder that holds "
        f"{cfg['name']}/). Where to get them: {'; '.join(where) or 'no source is recorded in data.download'}. "
        f"Not downloaded because {reason}."
    )


def _fetch(url: str, dest: Path) -> None:
    # A timeout keeps a dead mirror from hanging a sweep; file:// URLs (tests) go through the same path.
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _zip_member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    # Archives often wrap the files in a folder (ml-100k.zip holds ml-100k/u.data): match by
    # base name, preferring the shallowest member.
    matches = [m for m in zf.infolist() if not m.is_dir() and m.filename.rsplit("/", 1)[-1] == name]
    if not matches:
        listed = [m.filename for m in zf.infolist()][:20]
        raise DatasetError(f"the archive has no member named {name!r} (members: {listed})")
    return min(matches, key=lambda m: (m.filename.count("/"), m.filename))


def _download(folder: Path, names: list[str], dl: dict[str, Any]) -> None:
    """Fetch ``names`` into ``folder``: temporary files first, checksums, then no-overwrite moves."""
    url, archive = str(dl["url"]), dl["archive"]
    if archive is not None and archive not in ARCHIVES:
        raise DatasetError(f"data.download.archive is {archive!r}; accepted: {list(ARCHIVES)} or null")
    if archive is None and not url.endswith("/") and len(names) > 1:
        raise DatasetError(
            f"data.download.url {url!r} names one file but {len(names)} are missing; end it with '/' "
            f"to append each file name, or set data.download.archive"
        )
    expected = dl["sha256"] or {}
    # Folders this call creates, deepest first: removed again if the download fails.
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    placed = False

    def temp(label: str) -> Path:
        # In the target folder, so the final move is a rename on one filesystem.
        fd, path = tempfile.mkstemp(prefix=f".{label}.", suffix=".part", dir=folder)
        os.close(fd)
        os.chmod(path, 0o644)  # mkstemp makes it owner-only; a dataset cache is meant to be read by all
        temps.append(Path(path))
        return temps[-1]

    try:
        fetched: dict[str, Path] = {}
        if archive == "zip":
            zip_path = temp("archive")
            _fetch(url, zip_path)
            with zipfile.ZipFile(zip_path) as zf:
                for name in names:
                    fetched[name] = temp(name)
                    with zf.open(_zip_member(zf, name)) as src, open(fetched[name], "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        else:
            for name in names:
                fetched[name] = temp(name)
                _fetch(url + name if url.endswith("/") else url, fetched[name])
        # Check every file before placing any, so a bad download leaves the folder as it was.
        for name, path in fetched.items():
            digest = sha256_file(path)
            if name not in expected:
                raise DatasetError(
                    f"no checksum for {name} in data.download.sha256, so it is not trusted "
                    f"(the downloaded file has sha256 {digest})"
                )
            if digest != str(expected[name]).lower():
                raise DatasetError(
                    f"sha256 of {name} is {digest}, expected {expected[name]} (data.download.sha256)"
                )
        for name, path in fetched.items():
            _place(path, folder / name)
        placed = True
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
        if not placed:
            for d in created:
                try:
                    d.rmdir()  # only if still empty: never removes anything of anyone else's
                except OSError:
                    break


def _place(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` atomically, never replacing a file that is already there."""
    try:
        os.link(src, dest)  # fails if dest exists, unlike os.replace
    except FileExistsError:
        pass  # another process placed it first; keep theirs
    except OSError:
        # No hard links on this filesystem: rename, accepting a tiny race with another writer.
        if not dest.exists():
            os.replace(src, dest)


# ----------------------------------------------------------------------------------------------
# Synthetic data
#
# Each user draws its items without replacement with weights w_i = exp(logit_i), the logit being
# -popularity_exponent * log1p(popularity_rank_i) + affinity * [c_u == c_i]. The weights depend on
# the user only through its community, so one CDF per community serves all of its users, and no
# users x items array is ever built: memory is linear in the interactions (plus one n_items row).

# A sparse chunk holds the users of one community whose degrees sum to at most this many draws:
# its int64 keys and float64 uniforms stay near 32 MiB each, whatever the dataset size.
_SYNTHETIC_CHUNK = 1 << 22
# Dense rows: at most this many scores (users x n_items) in one Gumbel-top-k block.
_SYNTHETIC_DENSE_BLOCK = 1 << 22
# A user goes to the dense path (_needs_dense) when the sparse loop would crawl or cost more than
# its row. With tail(k) the weight outside the k heaviest items (a share of the total), each draw
# before the d-th distinct item is new with probability >= tail(d - 1): below this floor, topping
# up the last few items would take hundreds of rounds.
_SYNTHETIC_DENSE_TAIL = 0.05


def generate_synthetic(knobs: Mapping[str, Any]) -> RawColumns:
    """Implicit feedback with power-law item popularity and latent communities.

    Every user and item belongs to one of ``n_communities``; user ``u`` picks item ``i`` with
    logit ``-popularity_exponent * log(rank_i + 1) + affinity * [c_u == c_i]``, and draws its
    ``d_u`` items (its activity) without replacement with weights ``exp(logit)``, i.e. a
    Plackett-Luce / Gumbel-top-k sample. Popularity alone ranks poorly because most of a user's
    items come from its community, which a factorisation model recovers.

    Drawing: per community, one CDF over the items; all users of a community draw ``d_u`` items
    with replacement (``searchsorted`` on the CDF), repeats are dropped, and the users still short
    draw again exactly the number they miss, in rounds. Keeping the first ``d_u`` distinct items
    of an i.i.d. stream is sequential sampling without replacement (each new item is drawn in
    proportion to its weight among the items not yet taken), so this is the same distribution as
    the Gumbel-top-k; drawing exactly the missing number never overshoots, because a round can
    only complete a user on its last draw. A user for whom that loop would crawl or cost more
    than one pass over its row (little weight left outside its ``d_u - 1`` heaviest items, e.g.
    a degree near ``n_items``; see ``_SYNTHETIC_DENSE_TAIL``) gets the old Gumbel-top-k on its own
    row instead, a bounded block of rows at a time.

    Memory is linear in the interactions plus O(n_items); no users x items array exists.
    Items come sorted within each user, users ascending; times are uniform over the span.
    Deterministic given ``seed``. ``knobs`` names every one of :data:`SYNTHETIC_KNOBS`
    (``data.synthetic`` of the YAML).
    """
    if not isinstance(knobs, Mapping):
        raise DatasetError(
            f"data.synthetic must map every generator knob to its value (configs/data/synthetic.yaml), "
            f"got {knobs!r}"
        )
    unknown = sorted(set(knobs) - set(SYNTHETIC_KNOBS))
    if unknown:
        raise DatasetError(f"unknown keys {unknown} in data.synthetic; accepted: {sorted(SYNTHETIC_KNOBS)}")
    missing = [name for name in SYNTHETIC_KNOBS if name not in knobs]
    if missing:
        raise _missing("data.synthetic", missing)
    k = dict(knobs)
    n_users, n_items, n_total = int(k["n_users"]), int(k["n_items"]), int(k["n_interactions"])
    min_deg, n_comm = int(k["min_user_interactions"]), int(k["n_communities"])
    if min(n_users, n_items, n_comm, min_deg) < 1:
        raise DatasetError(
            "data.synthetic: n_users, n_items, n_communities and min_user_interactions must be >= 1"
        )
    if not n_users * min_deg <= n_total <= n_users * n_items:
        raise DatasetError(
            f"data.synthetic.n_interactions={n_total} must lie in [n_users * min_user_interactions, "
            f"n_users * n_items] = [{n_users * min_deg}, {n_users * n_items}]"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(k["seed"]), _SYNTHETIC_STREAM]))
    popularity_rank = rng.permutation(n_items)
    item_comm = rng.integers(n_comm, size=n_items)
    user_comm = rng.integers(n_comm, size=n_users)
    activity = rng.lognormal(0.0, float(k["activity_sigma"]), size=n_users)
    degrees = min_deg + rng.multinomial(n_total - n_users * min_deg, activity / activity.sum())
    # Clipping at n_items only bites for absurd knobs; the total is then slightly below target.
    degrees = np.minimum(degrees, n_items)

    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(degrees, out=indptr[1:])
    items = np.empty(int(indptr[-1]), np.int64)
    popularity = -float(k["popularity_exponent"]) * np.log1p(popularity_rank.astype(np.float64))
    for community in range(n_comm):
        members = np.flatnonzero(user_comm == community)
        if not len(members):
            continue
        logits = popularity + float(k["affinity"]) * (item_comm == community)
        weights = np.exp(logits - logits.max())
        dense = _needs_dense(weights, degrees[members])
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]  # exactly 1.0 at the end, so a uniform in [0, 1) never runs past the last item
        _draw_sparse(rng, cdf, members[~dense], degrees, indptr, items)
        _draw_dense(rng, logits, members[dense], degrees, indptr, items)
    users = np.repeat(np.arange(n_users, dtype=np.int64), degrees)
    times = rng.uniform(0, float(k["time_span_days"]) * 86_400, size=len(users))
    times += float(k["time_start"])
    np.floor(times, out=times)
    return RawColumns(users, items, times=times)


def _needs_dense(weights: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """True for each user (given by its degree) whose rejection loop would crawl or cost more
    than one Gumbel pass over its row of ``len(weights)`` scores."""
    # tail[k]: weight outside the k heaviest items, as a share of the total. The (k+1)-th new
    # item takes at most 1 / tail[k] draws in expectation, so draws[d - 1] bounds the whole loop.
    tail = np.cumsum(np.sort(weights))[::-1] / weights.sum()
    with np.errstate(divide="ignore"):  # weights that underflow to 0 leave tail 0: dense
        draws = np.cumsum(1.0 / tail)
    return (tail[degrees - 1] < _SYNTHETIC_DENSE_TAIL) | (draws[degrees - 1] > len(weights))


def _place_rows(
    out: np.ndarray, indptr: np.ndarray, users: np.ndarray, counts: np.ndarray, values: np.ndarray
) -> None:
    """Write ``values`` (grouped by user, ``counts[j]`` entries for ``users[j]``) into their rows."""
    starts = np.cumsum(counts) - counts
    offset = np.repeat(indptr[users] - starts, counts)
    offset += np.arange(len(values), dtype=np.int64)
    out[offset] = values


def _draw_sparse(
    rng: np.random.Generator,
    cdf: np.ndarray,
    users: np.ndarray,
    degrees: np.ndarray,
    indptr: np.ndarray,
    out: np.ndarray,
) -> None:
    """Draw ``degrees[u]`` distinct items for each of ``users`` (ascending) by rejection on ``cdf``.

    Users are taken in chunks of about ``_SYNTHETIC_CHUNK`` draws. Each round draws, for every
    user still short, exactly the number of items it misses; keys ``user * n_items + item`` find
    the repeats, and finished users are written to ``out`` at once.
    """
    n_items = len(cdf)
    ends = np.cumsum(degrees[users])
    lo = 0
    while lo < len(users):
        done_before = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done_before + _SYNTHETIC_CHUNK, side="right")))
        active, need = users[lo:hi], degrees[users[lo:hi]]
        keys = np.empty(0, np.int64)
        have = np.zeros(len(active), np.int64)
        while len(active):
            short = need - have
            drawn = np.searchsorted(cdf, rng.random(int(short.sum())), side="right")
            drawn += np.repeat(active * n_items, short)
            keys = np.concatenate([keys, drawn])
            del drawn
            keys.sort()  # a sort and a mask: np.unique's hash table is several times slower here
            keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
            have = np.searchsorted(keys, (active + 1) * n_items) - np.searchsorted(keys, active * n_items)
            finished = have == need
            in_finished = np.repeat(finished, have)
            _place_rows(out, indptr, active[finished], need[finished], keys[in_finished] % n_items)
            keys = keys[~in_finished]
            active, need, have = active[~finished], need[~finished], have[~finished]
        lo = hi


def _draw_dense(
    rng: np.random.Generator,
    logits: np.ndarray,
    users: np.ndarray,
    degrees: np.ndarray,
    indptr: np.ndarray,
    out: np.ndarray,
) -> None:
    """Gumbel-top-k on the rows of ``users``: each keeps its ``degrees[u]`` best ``logits + Gumbel``.

    Rows go in blocks of at most ``_SYNTHETIC_DENSE_BLOCK`` scores, so memory stays bounded
    however many users take this path.
    """
    n_items = len(logits)
    rows = max(1, _SYNTHETIC_DENSE_BLOCK // n_items)
    for lo in range(0, len(users), rows):
        block, need = users[lo : lo + rows], degrees[users[lo : lo + rows]]
        scores = rng.gumbel(size=(len(block), n_items))
        scores += logits
        order = np.argsort(-scores, axis=1)
        del scores
        chosen = np.zeros(order.shape, bool)
        np.put_along_axis(chosen, order, np.arange(n_items) < need[:, None], axis=1)
        _place_rows(out, indptr, block, need, np.nonzero(chosen)[1])


# ----------------------------------------------------------------------------------------------
# Filtering, remapping, splitting


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Entries that survive the k-core: repeat until every user and item has >= k of them.

    ``users``/``items`` are non-negative integer codes. Removing a user can push an item
    below k and back, so one pass is not enough.
    """
    keep = np.ones(len(users), bool)
    if k <= 0 or len(users) == 0:
        return keep
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    while True:
        user_deg = np.bincount(users[keep], minlength=n_users)
        item_deg = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_deg[users] >= k) & (item_deg[items] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def split_by_ratio(users: np.ndarray, ratios: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Label each interaction 0 (train), 1 (valid) or 2 (test), at random within each user.

    A user with ``n`` interactions gets ``round(n * r_train)`` train entries (at least one) and
    ``round(n * (r_train + r_valid))`` train + valid entries; the rest go to test. Rounding the
    cumulative shares keeps the totals close to the ratios even for many small users.
    """
    n = len(users)
    labels = np.empty(n, np.int8)
    if n == 0:
        return labels
    order = np.lexsort((rng.random(n), users))  # users grouped, random order inside each group
    grouped = users[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    del grouped
    sizes = np.diff(np.r_[starts, n])
    # The cut points are computed once per user and only then spread over its entries, so no
    # float64 array of n entries is built (at 50M interactions each would take 400 MB).
    cum = np.cumsum(np.asarray(ratios, np.float64))
    n_train = np.maximum(1, np.floor(sizes * cum[0] + 0.5))
    n_train_valid = np.maximum(n_train, np.floor(sizes * cum[1] + 0.5))
    rank = np.arange(n)
    rank -= np.repeat(starts, sizes)
    in_order = (rank >= np.repeat(n_train, sizes)).astype(np.int8)
    in_order += rank >= np.repeat(n_train_valid, sizes)
    labels[order] = in_order
    return labels


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique values, code of every entry): hashing, so O(n) where np.unique sorts."""
    codes, uniques = pd.factorize(values, sort=True)
    return np.asarray(uniques), codes.astype(np.int64, copy=False)


def _concat_ids(columns: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype.kind not in "iu" for c in columns):
        columns = [c.astype(str) for c in columns]  # one id space even if files disagree on types
    return columns[0] if len(columns) == 1 else np.concatenate(columns)


def _first_occurrences(
    groups: np.ndarray | None, users: np.ndarray, items: np.ndarray, n_items: int
) -> np.ndarray:
    """Mask keeping the first of each repeated (group, user, item); ``groups=None``: one group."""
    keys = users * n_items + items
    if groups is not None:
        keys += groups.astype(np.int64) * ((int(users.max(initial=0)) + 1) * n_items)
    if np.all(keys[1:] > keys[:-1]):
        # Strictly increasing keys (generated data, files written in order) repeat nothing, and
        # skipping the hash table saves about 20 bytes per interaction (1 GB at 50M).
        return np.ones(len(keys), bool)
    return ~pd.Series(keys).duplicated(keep="first").to_numpy()


def _threshold(raw: RawColumns, threshold: float | None, fmt: str, role: str) -> RawColumns:
    if threshold is None:
        return raw
    if raw.ratings is None:
        raise DatasetError(
            f"data.implicit_threshold={threshold} but format {fmt!r} ({role} file) has no ratings; "
            f"set data.implicit_threshold=null"
        )
    keep = raw.ratings >= threshold
    return RawColumns(
        raw.users[keep], raw.items[keep], raw.ratings[keep], None if raw.times is None else raw.times[keep]
    )


def load_dataset(data_cfg: Any, seed: int) -> InteractionData:
    """Read, filter, remap and split the dataset of ``data_cfg`` (a ``configs/data`` config).

    ``seed`` drives the random split only; the synthetic generator has its own
    ``data.synthetic.seed`` so every run sees the same dataset.
    """
    cfg = _config(data_cfg)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
    mode = cfg["split"]["mode"]
    if cfg["format"] == "synthetic":
        if mode != "ratio":
            raise DatasetError("the synthetic format has no files of its own: data.split.mode must be ratio")
        parts = {"all": generate_synthetic(cfg["synthetic"])}
    else:
        paths = locate_files(cfg)
        parts = {
            role: read_file(cfg["format"], path, cfg["sep"], cfg["columns"]) for role, path in paths.items()
        }
    parts = {
        role: _threshold(raw, cfg["implicit_threshold"], cfg["format"], role) for role, raw in parts.items()
    }

    roles = list(parts)
    # int8: at most the three roles of GIVEN_ROLES; an int64 per interaction would be 400 MB at 50M
    role_of = np.repeat(np.arange(len(roles), dtype=np.int8), [len(p) for p in parts.values()])
    raw_users, users = _factorize(_concat_ids([p.users for p in parts.values()]))
    raw_items, items = _factorize(_concat_ids([p.items for p in parts.values()]))
    has_times = all(p.times is not None for p in parts.values())
    times = None
    if has_times:
        times = np.concatenate([p.times for p in parts.values()]) if len(parts) > 1 else parts[roles[0]].times
    del parts  # the raw columns are coded now; keeping them would hold a second copy to the end

    # Ratio mode splits one pool, so duplicates are found across files; given mode keeps each file.
    keep = _first_occurrences(role_of if mode == "given" else None, users, items, len(raw_items))
    if cfg["kcore"] > 0:  # the filter copies users and items; with k = 0 it would keep all anyway
        keep[keep] = kcore_mask(users[keep], items[keep], cfg["kcore"])
    if not keep.any():
        raise DatasetError(
            f"dataset {cfg['name']!r}: no interactions left after data.implicit_threshold="
            f"{cfg['implicit_threshold']} and data.kcore={cfg['kcore']}"
        )
    if keep.all():  # nothing dropped: every id is still used, so the codes stand as they are
        used_users, used_items = np.arange(len(raw_users)), np.arange(len(raw_items))
    else:
        used_users, users = _factorize(users[keep])
        used_items, items = _factorize(items[keep])
        role_of = role_of[keep]
        times = None if times is None else times[keep]
    del keep
    n_users, n_items = len(used_users), len(used_items)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM]))
    if mode == "ratio":
        labels = split_by_ratio(users, cfg["split"]["ratios"], rng)
    else:
        labels = np.array([GIVEN_ROLES.index(r) for r in roles], np.int8)[role_of]
        if "valid" not in roles and cfg["split"]["valid_ratio"] > 0:
            in_train = np.flatnonzero(labels == _TRAIN)
            v = float(cfg["split"]["valid_ratio"])
            labels[in_train] = split_by_ratio(users[in_train], [1 - v, v, 0.0], rng)

    def split_of(label: int) -> Split:
        mask = labels == label
        return Split(
            users[mask].astype(np.int64, copy=False),
            items[mask].astype(np.int64, copy=False),
            None if times is None else times[mask].astype(np.float64, copy=False),
        )

    return InteractionData(
        name=cfg["name"],
        n_users=n_users,
        n_items=n_items,
        train=split_of(_TRAIN),
        valid=split_of(_VALID),
        test=split_of(_TEST),
        user_ids=raw_users[used_users],
        item_ids=raw_items[used_items],
    )
