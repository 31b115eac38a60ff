"""load_dataset: threshold, k-core, remapping, splits, locating/downloading files, shipped configs.

The synthetic generator itself is tested in test_synthetic.py.

Every test writes its own small files under tmp_path; nothing here reads real datasets or
touches the network (downloads use file:// URLs).
"""

from __future__ import annotations

import copy
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedshare.data.datasets import (
    DatasetError,
    check_config,
    dataset_dir,
    kcore_mask,
    load_dataset,
    locate_files,
    split_by_ratio,
)
from fedshare.data.interactions import InteractionData, Split, to_csr
from tests.conftest import data_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"

SMALL_SYNTHETIC = {"n_users": 200, "n_items": 300, "n_interactions": 6000}


def updated(cfg: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``cfg`` with ``overrides``; a dict for ``split`` or ``download`` updates that section."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        sectioned = key in ("split", "download") and isinstance(value, dict)
        cfg[key] = {**cfg[key], **value} if sectioned else value
    return cfg


def local_cfg(name: str, root: Path, /, **overrides: Any) -> dict[str, Any]:
    """configs/data/<name>.yaml reading <root>/toy/, never downloading, with ``overrides``."""
    cfg = data_cfg(name, name="toy", root=str(root))
    cfg["download"]["url"] = None  # nothing here touches the network unless a test names a URL
    return updated(cfg, **overrides)


def ml100k_cfg(root: Path, **overrides: Any) -> dict[str, Any]:
    """The ml-100k config on a toy u.data: every rating kept, all of it in train."""
    return local_cfg(
        "ml-100k", root, **{"implicit_threshold": None, "split": {"ratios": [1.0, 0.0, 0.0]}, **overrides}
    )


def write_ml100k(root: Path, rows: list[tuple[int, int, float, int]], name: str = "toy") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return path


def given_cfg(root: Path, valid: str | None = None, valid_ratio: float = 0.0) -> dict[str, Any]:
    """The gowalla config (LightGCN files train.txt / test.txt, given split) on a toy folder."""
    cfg = local_cfg("gowalla", root, split={"valid_ratio": valid_ratio})
    cfg["files"]["valid"] = valid
    return cfg


def write_lightgcn(folder: Path, name: str, rows: dict[int, list[int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in rows.items()))
    return path


def pairs(data: InteractionData, split: Split) -> set[tuple[Any, Any]]:
    """The split as (raw user, raw item) pairs."""
    return set(zip(data.user_ids[split.users].tolist(), data.item_ids[split.items].tolist()))


def keys(split: Split, n_items: int) -> np.ndarray:
    return split.users * n_items + split.items


def synthetic_cfg(seed: int = 0, ratios: list[float] | None = None) -> dict[str, Any]:
    cfg = data_cfg("synthetic")
    cfg["synthetic"].update(SMALL_SYNTHETIC, seed=seed)
    if ratios is not None:
        cfg["split"]["ratios"] = ratios
    return cfg


# ----------------------------------------------------------------------------------------------
# Threshold, duplicates, k-core, remapping


def test_implicit_threshold_keeps_ratings_at_or_above(tmp_path: Path) -> None:
    write_ml100k(tmp_path, [(1, 10, 5, 100), (1, 11, 3, 101), (2, 10, 4, 102), (2, 12, 1, 103)])
    data = load_dataset(ml100k_cfg(tmp_path, implicit_threshold=4), seed=0)
    assert pairs(data, data.train) == {(1, 10), (2, 10)}
    assert data.n_items == 1  # items 11 and 12 have no positive left, so they get no id
    every = load_dataset(ml100k_cfg(tmp_path, implicit_threshold=None), seed=0)
    assert len(every.train) == 4


def test_threshold_without_ratings_is_an_error(tmp_path: Path) -> None:
    write_lightgcn(tmp_path / "toy", "train.txt", {0: [1]})
    write_lightgcn(tmp_path / "toy", "test.txt", {0: [2]})
    cfg = {**given_cfg(tmp_path), "implicit_threshold": 4}
    with pytest.raises(DatasetError, match="has no ratings.*implicit_threshold=null"):
        load_dataset(cfg, seed=0)


def test_duplicates_keep_the_first_occurrence(tmp_path: Path) -> None:
    write_ml100k(tmp_path, [(1, 10, 5, 300), (1, 11, 5, 200), (1, 10, 4, 100)])
    data = load_dataset(ml100k_cfg(tmp_path), seed=0)
    assert len(data.train) == 2
    kept = data.train.times[data.item_ids[data.train.items] == 10]
    assert kept.tolist() == [300.0]


# k = 2. u3 has one item, so it goes in pass 1; that leaves item 2 with one user (pass 2),
# which leaves u2 with one item (pass 3). One pass would keep u2 and item 2.
KCORE_ROWS = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2)]


def test_kcore_needs_several_passes() -> None:
    users = np.array([u for u, _ in KCORE_ROWS])
    items = np.array([i for _, i in KCORE_ROWS])
    keep = kcore_mask(users, items, 2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    one_pass = (np.bincount(users)[users] >= 2) & (np.bincount(items)[items] >= 2)
    assert one_pass.sum() > keep.sum()  # the example really needs the iteration
    assert kcore_mask(users, items, 0).all()


def test_kcore_in_load_dataset_and_remapping(tmp_path: Path) -> None:
    # Raw ids far from 0..n-1 so remapping is visible.
    write_ml100k(tmp_path, [(100 + u, 500 - i, 5, t) for t, (u, i) in enumerate(KCORE_ROWS)])
    data = load_dataset(ml100k_cfg(tmp_path, kcore=2), seed=0)
    assert (data.n_users, data.n_items) == (2, 2)
    assert data.user_ids.tolist() == [100, 101]  # sorted raw ids
    assert data.item_ids.tolist() == [499, 500]
    assert pairs(data, data.train) == {(100, 500), (100, 499), (101, 500), (101, 499)}
    assert data.train.users.dtype == np.int64 and data.train.users.max() == 1


def test_remapping_is_shared_by_all_splits(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    write_lightgcn(folder, "train.txt", {5: [40, 20], 9: [20]})
    write_lightgcn(folder, "test.txt", {5: [30], 7: [40]})  # user 7 and item 30 appear in test only
    data = load_dataset(given_cfg(tmp_path), seed=0)
    assert data.user_ids.tolist() == [5, 7, 9] and data.item_ids.tolist() == [20, 30, 40]
    assert pairs(data, data.train) == {(5, 40), (5, 20), (9, 20)}
    assert pairs(data, data.test) == {(5, 30), (7, 40)}
    assert data.train.times is None


# ----------------------------------------------------------------------------------------------
# Ratio split


def test_ratio_split_is_seeded_and_disjoint() -> None:
    a, b, c = (load_dataset(synthetic_cfg(), seed=s) for s in (0, 0, 1))
    for name in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, name).users, getattr(b, name).users)
        assert np.array_equal(getattr(a, name).items, getattr(b, name).items)
    assert not np.array_equal(keys(a.test, a.n_items), keys(c.test, c.n_items))
    # The run seed moves the split, never the data.
    union = [
        np.sort(np.concatenate([keys(d.train, d.n_items), keys(d.valid, d.n_items), keys(d.test, d.n_items)]))
        for d in (a, c)
    ]
    assert np.array_equal(*union)

    train, valid, test = (keys(s, a.n_items) for s in (a.train, a.valid, a.test))
    assert not np.intersect1d(train, valid).size and not np.intersect1d(train, test).size
    assert not np.intersect1d(valid, test).size
    assert np.array_equal(np.unique(a.train.users), np.arange(a.n_users))
    total = len(train) + len(valid) + len(test)
    assert abs(len(test) / total - 0.1) < 0.02 and abs(len(valid) / total - 0.1) < 0.02


def test_every_user_keeps_a_training_interaction() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), [1, 1, 2, 3, 4, 10])
    labels = split_by_ratio(users, [0.1, 0.45, 0.45], rng)
    assert all((labels[users == u] == 0).any() for u in range(6))
    assert (labels[users == 0] == 0).all()  # a single interaction always stays in train


def test_split_labels_are_those_of_the_per_entry_formula() -> None:
    """split_by_ratio computes its cut points per user; the labels must be those of the formula
    spelled out per entry (the split of every published run), seed for seed."""
    users = np.random.default_rng(1).integers(0, 300, 5000)
    for ratios in ([0.8, 0.1, 0.1], [0.5, 0.0, 0.5], [0.7, 0.2, 0.1]):
        rng = np.random.default_rng(np.random.SeedSequence([3, 0x5911]))
        order = np.lexsort((rng.random(len(users)), users))
        grouped = users[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        sizes = np.diff(np.r_[starts, len(users)])
        rank = np.arange(len(users)) - np.repeat(starts, sizes)
        size = np.repeat(sizes, sizes).astype(np.float64)
        cum = np.cumsum(ratios)
        n_train = np.maximum(1, np.floor(size * cum[0] + 0.5))
        n_train_valid = np.maximum(n_train, np.floor(size * cum[1] + 0.5))
        expected = np.empty(len(users), np.int8)
        expected[order] = (rank >= n_train).astype(np.int8) + (rank >= n_train_valid)
        rng = np.random.default_rng(np.random.SeedSequence([3, 0x5911]))
        assert np.array_equal(split_by_ratio(users, ratios, rng), expected)


def test_to_csr_orders_like_lexsort_and_keeps_duplicates() -> None:
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)  # many repeated pairs
    times = rng.random(3000)
    csr = to_csr(Split(users, items, times), 60, 40)
    order = np.lexsort((items, users))
    assert np.array_equal(csr.items, items[order]) and np.array_equal(csr.times, times[order])
    assert np.array_equal(csr.indptr, np.r_[0, np.cumsum(np.bincount(users, minlength=60))])
    already = to_csr(Split(users[order], items[order], times[order]), 60, 40)  # the in-order case
    assert np.array_equal(already.items, csr.items) and np.array_equal(already.times, csr.times)


def test_duplicates_in_sorted_files_are_found_too(tmp_path: Path) -> None:
    """Pairs in strictly increasing (user, item) order skip the duplicate search; a file in
    order with a repeated pair must still lose the repeat."""
    rows = [(1, 1, 5, 10), (1, 2, 5, 11), (2, 1, 5, 12), (2, 3, 5, 13)]
    write_ml100k(tmp_path, rows)
    assert len(load_dataset(ml100k_cfg(tmp_path), seed=0).train) == 4
    write_ml100k(tmp_path, [*rows[:2], (1, 2, 3, 99), *rows[2:]])
    data = load_dataset(ml100k_cfg(tmp_path), seed=0)
    assert len(data.train) == 4 and data.train.times.tolist() == [10, 11, 12, 13]


def test_ratios_must_sum_to_one() -> None:
    with pytest.raises(
        DatasetError, match=r"data.split.ratios \[0.8, 0.1, 0.2\] sum to 1.1; they must sum to 1"
    ):
        load_dataset(synthetic_cfg(ratios=[0.8, 0.1, 0.2]), seed=0)
    with pytest.raises(DatasetError, match="train share must be > 0"):
        load_dataset(synthetic_cfg(ratios=[0.0, 0.5, 0.5]), seed=0)


# ----------------------------------------------------------------------------------------------
# Given split


def test_given_split_with_valid_file(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    write_lightgcn(folder, "train.txt", {0: [1, 2, 2], 1: [2]})  # the repeated 2 is dropped
    write_lightgcn(folder, "valid.txt", {0: [3]})
    write_lightgcn(folder, "test.txt", {1: [1]})
    data = load_dataset(given_cfg(tmp_path, valid="valid.txt", valid_ratio=0.5), seed=0)
    assert pairs(data, data.train) == {(0, 1), (0, 2), (1, 2)}
    assert pairs(data, data.valid) == {(0, 3)}  # the file wins over valid_ratio
    assert pairs(data, data.test) == {(1, 1)}


def test_given_split_without_valid(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    train_rows = {u: list(range(u, u + 10)) for u in range(20)}
    write_lightgcn(folder, "train.txt", train_rows | {20: [0]})
    write_lightgcn(folder, "test.txt", {u: [100 + u] for u in range(21)})
    no_valid = load_dataset(given_cfg(tmp_path, valid_ratio=0.0), seed=0)
    assert len(no_valid.valid) == 0 and len(no_valid.train) == 201

    carved = load_dataset(given_cfg(tmp_path, valid_ratio=0.2), seed=0)
    assert len(carved.valid) == 40  # 2 of each 10-item user; the 1-item user keeps its item
    assert pairs(carved, carved.train) | pairs(carved, carved.valid) == pairs(no_valid, no_valid.train)
    assert not pairs(carved, carved.train) & pairs(carved, carved.valid)
    assert pairs(carved, carved.test) == pairs(no_valid, no_valid.test)
    assert np.array_equal(np.unique(carved.train.users), np.arange(21))
    again = load_dataset(given_cfg(tmp_path, valid_ratio=0.2), seed=0)
    assert np.array_equal(again.valid.items, carved.valid.items)


def test_given_mode_needs_train_and_test_files(tmp_path: Path) -> None:
    cfg = ml100k_cfg(tmp_path, split={"mode": "given"})
    with pytest.raises(DatasetError, match="data.files.train, data.files.test"):
        load_dataset(cfg, seed=0)


# ----------------------------------------------------------------------------------------------
# Other formats through the whole pipeline


def test_sequence_and_csv_times(tmp_path: Path) -> None:
    (tmp_path / "beauty").mkdir()
    (tmp_path / "beauty" / "Beauty.txt").write_text("1 7 8 9\n2 8 9\n")
    seq = load_dataset(
        local_cfg("amazon-beauty", tmp_path, name="beauty", kcore=0, split={"ratios": [1, 0, 0]}), seed=0
    )
    assert seq.train.times.tolist() == [0.0, 1.0, 2.0, 0.0, 1.0]

    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "log.csv").write_text("who,what,when\nann,tea,30\nbob,tea,10\nann,pot,20\n")
    cfg = local_cfg(
        "csv",
        tmp_path,
        name="shop",
        files={"ratings": "log.csv"},
        columns={"user": "who", "item": "what", "time": "when"},
        split={"ratios": [1, 0, 0]},
    )
    shop = load_dataset(cfg, seed=0)
    assert shop.user_ids.tolist() == ["ann", "bob"] and shop.item_ids.tolist() == ["pot", "tea"]
    assert shop.train.times.tolist() == [30.0, 10.0, 20.0]


def test_omegaconf_config_and_unknown_key(tmp_path: Path) -> None:
    write_ml100k(tmp_path, [(1, 2, 5, 0)])
    data = load_dataset(OmegaConf.create(ml100k_cfg(tmp_path)), seed=0)
    assert len(data.train) == 1
    with pytest.raises(DatasetError, match=r"unknown data config keys \['kcores'\]; accepted: .*'kcore'"):
        load_dataset({**ml100k_cfg(tmp_path), "kcores": 5}, seed=0)


def test_a_missing_key_is_a_clear_error_naming_it() -> None:
    # The YAML holds every value: the loader fills in none, it names what is missing.
    no_ratios = data_cfg("synthetic")
    del no_ratios["split"]["ratios"]
    with pytest.raises(DatasetError, match=r"^data\.split\.ratios is missing; .*configs/data/\*\.yaml"):
        load_dataset(no_ratios, seed=0)
    no_kcore = data_cfg("synthetic")
    del no_kcore["kcore"]
    with pytest.raises(DatasetError, match=r"^data\.kcore is missing; "):
        check_config(OmegaConf.create(no_kcore))
    with pytest.raises(DatasetError, match=r"^data\.download\.url, data\.download\.source are missing; "):
        check_config(data_cfg("synthetic", download={"archive": None, "sha256": None}))


# ----------------------------------------------------------------------------------------------
# Locating and downloading files


def test_dataset_dir_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = data_cfg("ml-100k")
    monkeypatch.setenv("FEDSHARE_DATA", str(tmp_path / "env"))
    assert dataset_dir(cfg) == tmp_path / "env" / "ml-100k"
    assert dataset_dir({**cfg, "root": str(tmp_path / "cfg")}) == tmp_path / "cfg" / "ml-100k"
    monkeypatch.delenv("FEDSHARE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dataset_dir(cfg) == tmp_path / "home" / ".cache" / "fedshare" / "datasets" / "ml-100k"


def test_missing_files_without_url(tmp_path: Path) -> None:
    cfg = updated(given_cfg(tmp_path, valid="valid.txt"), download={"source": "the LightGCN++ repository"})
    write_lightgcn(tmp_path / "toy", "valid.txt", {0: [1]})
    with pytest.raises(DatasetError) as err:
        load_dataset(cfg, seed=0)
    message = str(err.value)
    assert "missing train.txt, test.txt in " + str(tmp_path / "toy") in message
    assert "valid.txt" not in message.split("Put")[0]  # present files are not listed
    assert "the LightGCN++ repository" in message and "data.download.url is null" in message


def test_missing_files_with_failing_download(tmp_path: Path) -> None:
    url = (tmp_path / "mirror" / "nothing.zip").as_uri()
    cfg = ml100k_cfg(
        tmp_path / "data", download={"url": url, "archive": "zip", "sha256": {"u.data": "0" * 64}}
    )
    with pytest.raises(DatasetError) as err:
        load_dataset(cfg, seed=0)
    message = str(err.value)
    assert "missing u.data in " + str(tmp_path / "data" / "toy") in message
    assert url in message and "the download failed" in message
    assert not (tmp_path / "data").exists()  # nothing half-written, not even the folder


U_DATA = "1\t10\t5\t100\n2\t10\t4\t200\n2\t11\t3\t300\n"


def make_zip(tmp_path: Path) -> str:
    archive = tmp_path / "mirror" / "toy.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/README", "not needed")
        zf.writestr("toy/u.data", U_DATA)
    return archive.as_uri()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_download_zip_with_good_checksum(tmp_path: Path) -> None:
    url = make_zip(tmp_path)
    cfg = ml100k_cfg(
        tmp_path / "data", download={"url": url, "archive": "zip", "sha256": {"u.data": sha256(U_DATA)}}
    )
    data = load_dataset(cfg, seed=0)
    assert len(data.train) == 3
    folder = tmp_path / "data" / "toy"
    assert sorted(p.name for p in folder.iterdir()) == ["u.data"]  # no archive or temporary left
    assert (folder / "u.data").read_text() == U_DATA


def test_download_zip_with_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    url = make_zip(tmp_path)
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    cfg = ml100k_cfg(
        tmp_path / "data", download={"url": url, "archive": "zip", "sha256": {"u.data": "ab" * 32}}
    )
    with pytest.raises(
        DatasetError, match=re.escape(f"sha256 of u.data is {sha256(U_DATA)}, expected {'ab' * 32}")
    ):
        load_dataset(cfg, seed=0)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"


def test_download_per_file_never_touches_present_files(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    write_lightgcn(mirror, "train.txt", {0: [1, 2]})
    write_lightgcn(mirror, "test.txt", {0: [3]})
    folder = tmp_path / "data" / "toy"
    local_test = write_lightgcn(folder, "test.txt", {0: [4]})  # differs from the mirror's copy
    before = local_test.stat().st_mtime_ns
    digests = {
        name: hashlib.sha256((mirror / name).read_bytes()).hexdigest() for name in ("train.txt", "test.txt")
    }

    bad = updated(
        given_cfg(tmp_path / "data"),
        download={"url": mirror.as_uri() + "/", "sha256": {**digests, "train.txt": "0" * 64}},
    )
    with pytest.raises(DatasetError, match="missing train.txt in .*the download failed: sha256 of train.txt"):
        locate_files(bad)
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt"]

    good = updated(bad, download={"url": mirror.as_uri() + "/", "sha256": digests})
    paths = locate_files(good)
    assert paths == {"train": folder / "train.txt", "test": folder / "test.txt"}
    assert local_test.stat().st_mtime_ns == before and local_test.read_text() == "0 4\n"
    data = load_dataset(good, seed=0)
    assert pairs(data, data.test) == {(0, 4)}


def test_download_without_checksum_is_refused(tmp_path: Path) -> None:
    url = make_zip(tmp_path)
    cfg = ml100k_cfg(tmp_path / "data", download={"url": url, "archive": "zip", "sha256": None})
    with pytest.raises(
        DatasetError, match=f"no checksum for u.data in data.download.sha256.*{sha256(U_DATA)}"
    ):
        load_dataset(cfg, seed=0)


# ----------------------------------------------------------------------------------------------
# The shipped configs


def test_shipped_configs_share_keys_and_comment_every_key() -> None:
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    names = {p.stem for p in files}
    assert {"synthetic", "ml-100k", "ml-1m", "gowalla", "lastfm", "amazon-beauty"} <= names
    top_keys = {p.stem: list(OmegaConf.load(p).keys()) for p in files}
    assert len({tuple(k) for k in top_keys.values()}) == 1, top_keys
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if re.match(r"^\s*[\w.\-]+:", line):
                assert re.search(r"#\s*\(\w[^)]*\)\s+\S", line), (
                    f"{path.name}:{n} has no '# (type) meaning' comment"
                )


def test_synthetic_config_loads() -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "synthetic.yaml")
    cfg.synthetic.n_users, cfg.synthetic.n_items, cfg.synthetic.n_interactions = 100, 200, 3000
    data = load_dataset(cfg, seed=0)
    assert data.n_users == 100 and len(data.train) + len(data.valid) + len(data.test) == 3000
    assert data.train.times is not None


def test_failed_download_removes_the_folders_it_created(tmp_path: Path) -> None:
    cfg = ml100k_cfg(
        tmp_path / "new" / "root", download={"url": (tmp_path / "none.zip").as_uri(), "archive": "zip"}
    )
    with pytest.raises(DatasetError, match="the download failed"):
        locate_files(cfg)
    assert not (tmp_path / "new").exists()
