"""Readers: one small file per format, written under tmp_path, plus malformed-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedshare.data.readers import (
    DatasetError,
    read_csv,
    read_file,
    read_lightgcn,
    read_ml1m,
    read_ml100k,
    read_pairs,
    read_sequence,
)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_ml100k(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t5\t891717742\n")
    raw = read_ml100k(path)
    assert raw.users.tolist() == [196, 186] and raw.items.tolist() == [242, 302]
    assert raw.ratings.tolist() == [3.0, 5.0]
    assert raw.times.tolist() == [881250949.0, 891717742.0]
    assert raw.users.dtype == np.int64 and raw.times.dtype == np.float64


def test_ml1m(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    raw = read_ml1m(path)
    assert raw.users.tolist() == [1, 1, 2]
    assert raw.items.tolist() == [1193, 661, 1193]
    assert raw.ratings.tolist() == [5.0, 3.0, 4.0]
    assert raw.times[0] == 978300760.0


def test_lightgcn_lines_with_only_a_user_and_trailing_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, "train.txt", "0 5 6 7 \n1\n\n2 5  \n3 8\n")
    raw = read_lightgcn(path)
    assert raw.users.tolist() == [0, 0, 0, 2, 3]
    assert raw.items.tolist() == [5, 6, 7, 5, 8]
    assert raw.ratings is None and raw.times is None


def test_pairs_with_weights_tabs_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "data1.txt", b"2\t51\t13883\r\n2\t52\t1.1e+04\r\n4\t51\t7\r\n")
    raw = read_pairs(path)
    assert raw.users.tolist() == [2, 2, 4] and raw.items.tolist() == [51, 52, 51]
    assert raw.ratings.tolist() == [13883.0, 11000.0, 7.0]
    assert raw.times is None


def test_pairs_without_weights_space_separated(tmp_path: Path) -> None:
    raw = read_pairs(write(tmp_path, "pairs.txt", "1 10\n2 20\n"))
    assert raw.users.tolist() == [1, 2] and raw.items.tolist() == [10, 20] and raw.ratings is None


def test_sequence_times_are_positions(tmp_path: Path) -> None:
    raw = read_sequence(write(tmp_path, "Beauty.txt", "1 1 2 3\n2 4 1\n"))
    assert raw.users.tolist() == [1, 1, 1, 2, 2]
    assert raw.items.tolist() == [1, 2, 3, 4, 1]
    assert raw.times.tolist() == [0, 1, 2, 0, 1]


def test_sequence_user_on_two_lines_continues_its_sequence(tmp_path: Path) -> None:
    raw = read_sequence(write(tmp_path, "seq.txt", "1 1 2\n2 3\n1 4\n"))
    assert raw.times.tolist() == [0, 1, 0, 2]


def test_csv_named_columns_and_string_ids(tmp_path: Path) -> None:
    text = "ts,item_id,user_id,stars\n100,A,u1,4.5\n90,B,u2,2\n80,A,u2,5\n"
    raw = read_csv(
        write(tmp_path, "r.csv", text),
        {"user": "user_id", "item": "item_id", "rating": "stars", "time": "ts"},
    )
    assert raw.users.tolist() == ["u1", "u2", "u2"]
    assert raw.items.tolist() == ["A", "B", "A"]
    assert raw.ratings.tolist() == [4.5, 2.0, 5.0]
    assert raw.times.tolist() == [100.0, 90.0, 80.0]


def test_csv_other_separator_without_rating_or_time(tmp_path: Path) -> None:
    raw = read_csv(
        write(tmp_path, "r.tsv", "u;i\n1;2\n3;4\n"), {"user": "u", "item": "i", "rating": None}, sep=";"
    )
    assert raw.users.tolist() == [1, 3] and raw.users.dtype == np.int64
    assert raw.ratings is None and raw.times is None


def test_csv_missing_column_names_the_key_and_header(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user,item\n1,2\n")
    with pytest.raises(DatasetError, match=r"no column 'stars' \(data.columns.rating\).*\['user', 'item'\]"):
        read_csv(path, {"user": "user", "item": "item", "rating": "stars"})


def test_csv_non_numeric_rating_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user,item,rating\n1,2,4\n1,3,good\n")
    with pytest.raises(DatasetError, match=r"r\.csv, line 3: rating column 'rating' holds 'good'"):
        read_csv(path, {"user": "user", "item": "item", "rating": "rating"})


@pytest.mark.parametrize(
    ("fmt", "text", "line", "problem"),
    [
        ("ml100k", "1\t2\t3\t4\n1\t2\t3\n", 2, "3 fields where line 1 has 4"),
        ("ml100k", "1\t2\t3\t4\n5\tx\t3\t4\n", 2, "item 'x' is not an integer"),
        ("ml100k", "1\t2\t3\t4\n\n5\t6\tfive\t4\n", 3, "rating 'five' is not a finite number"),
        ("ml1m", "1::2::3::4\n1::2::3::4::5\n", 2, "5 fields where line 1 has 4"),
        ("lightgcn", "0 1 2\n1 3 abc 4\n", 2, "item id 2 'abc' is not an integer"),
        ("lightgcn", "0 1 2\nu7 3\n", 2, "user id 'u7' is not an integer"),
        ("pairs", "1\t2\t3\n4\t5\n", 2, "2 fields where line 1 has 3"),
        ("pairs", "1\n", 1, "1 fields instead of 2 to 3"),
        ("sequence", "1 2 3\n2 4 5.5\n", 2, "item id 2 '5.5' is not an integer"),
    ],
)
def test_malformed_line_names_file_line_and_format(
    tmp_path: Path, fmt: str, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DatasetError) as err:
        read_file(fmt, path)
    message = str(err.value)
    assert f"{path}, line {line}: {problem}" in message
    assert f"the {fmt} format expects" in message


def test_error_quotes_a_truncated_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train.txt", "0 1\n1 " + " ".join(["7"] * 100) + " oops\n")
    with pytest.raises(DatasetError, match=r"line 2: .*\.\.\.'") as err:
        read_lightgcn(path)
    assert len(str(err.value)) < 400


def test_slow_path_accepts_what_the_fast_path_rejects(tmp_path: Path) -> None:
    # Trailing tabs give pandas an extra empty column; the line scan strips them and must agree.
    clean = read_ml100k(write(tmp_path, "a.data", "1\t2\t3\t4\n5\t6\t7\t8\n"))
    quirky = read_ml100k(write(tmp_path, "b.data", "1\t2\t3\t4\t\n5\t6\t7\t8\n"))
    for name in ("users", "items", "ratings", "times"):
        assert getattr(clean, name).tolist() == getattr(quirky, name).tolist()


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="accepted"):
        read_file("parquet", tmp_path / "x")


def test_empty_file(tmp_path: Path) -> None:
    assert len(read_ml100k(write(tmp_path, "u.data", ""))) == 0
    assert len(read_lightgcn(write(tmp_path, "train.txt", "\n"))) == 0


def test_fast_and_line_scan_parsers_agree(tmp_path: Path) -> None:
    from fedshare.data import readers

    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *rng.integers(0, 50, size=rng.integers(0, 6))])) for u in range(40)]
    path = write(tmp_path, "train.txt", "\n".join(lines) + "\n")
    fast = readers._fast_rows(path, None)
    assert fast is not None
    slow = readers._scan_rows(path, None, "lightgcn")
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))

    rows = rng.integers(1, 1000, size=(30, 3))
    path = write(tmp_path, "pairs.txt", "".join(f"{u}\t{i}\t{w}\n" for u, i, w in rows))
    fast_cols = readers._fast_fields(path, None, readers._PAIR_FIELDS, 2)
    assert fast_cols is not None
    slow_cols = readers._scan_fields(path, None, readers._PAIR_FIELDS, 2, "pairs")
    assert all(np.array_equal(fast_cols[k], slow_cols[k]) for k in ("user", "item", "rating"))
