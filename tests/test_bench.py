"""The benchmark runs end to end on tiny data; its figures come from real runs, not from here."""

from __future__ import annotations

import json

import pytest

from fedshare import bench
from tests.conftest import TINY


def test_round_benchmark_prints_json_last(capsys: pytest.CaptureFixture) -> None:
    code = bench.main(["round", *TINY, "bench.repeats=2"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("vectorized_s", "reference_s", "speedup", "peak_rss_mb"):
        assert result[key] > 0
    assert result["clients"] == 60 and result["repeats"] == 2
    # both implementations trained the same parameters
    assert result["max_abs_diff_user_rows"] < 1e-5 and result["max_abs_diff_item_table"] < 1e-5


def test_unknown_benchmark_or_option(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["nope"]) == 2
    assert bench.main(["round", "bench.repeat=3"]) == 2
    assert "bench.repeats" in capsys.readouterr().err
