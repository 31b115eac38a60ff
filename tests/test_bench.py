"""The benchmark runs end to end on tiny data; its figures come from real runs, not from here."""

from __future__ import annotations

import json

import pytest
import torch

from fedshare import bench
from fedshare.benchmarks import suite
from fedshare.config import compose


def _last_json(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fedmf_round_benchmark_prints_json_last(tiny: list[str], capsys: pytest.CaptureFixture) -> None:
    code = bench.main(["round", "experiment=fedmf", *tiny, "bench.repeats=2"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("vectorized_s", "reference_s", "speedup", "peak_rss_mb"):
        assert result[key] > 0
    assert result["clients"] == 60 and result["repeats"] == 2
    # both implementations trained the same parameters
    assert result["max_abs_diff_user_rows"] < 1e-5 and result["max_abs_diff_item_table"] < 1e-5


def test_fedshare_round_benchmark_times_whole_rounds(tiny: list[str], capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["round", *tiny, "bench.repeats=2"]) == 0
    result = _last_json(capsys)
    assert result["model"] == "fedshare" and result["clients"] == 60 and result["shared_edges"] > 0
    for key in ("round_s", "client_s", "server_s", "peak_rss_mb"):
        assert result[key] > 0
    assert result["client_s"] + result["server_s"] <= result["round_s"] * 1.01
    assert len(result["round_all_s"]) == 2


@pytest.mark.parametrize("experiment", ["fedshare", "lightgcn_central"])
def test_eval_benchmark_scores_every_test_user(
    tiny: list[str], experiment: str, capsys: pytest.CaptureFixture
) -> None:
    assert bench.main(["eval", f"experiment={experiment}", *tiny, "bench.repeats=1"]) == 0
    result = _last_json(capsys)
    assert result["eval_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["users"] > 50
    # the figure is the test stage's recall of the model the benchmark built, recomputed here
    # one user at a time with plain masking and a top-20 (no batching, no hit matrix)
    cfg = compose(["experiment=" + experiment, *tiny])
    dm, model = suite._setup(cfg)
    if hasattr(model, "run_round"):
        model.run_round(1, model.configure_optimizers())
    if hasattr(model, "_refresh"):
        model._refresh()
    recalls = []
    for u in dm.test.degrees.nonzero()[0]:
        scores = model.score_users(torch.tensor([int(u)]))[0].float()
        for split in (dm.train, dm.valid):
            scores[torch.from_numpy(split.items[split.indptr[u] : split.indptr[u + 1]]).long()] = -float(
                "inf"
            )
        top = set(scores.topk(20).indices.tolist())
        target = set(dm.test.items[dm.test.indptr[u] : dm.test.indptr[u + 1]].tolist())
        recalls.append(len(top & target) / len(target))
    assert result["recall@20"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-6)


def test_unknown_benchmark_or_option(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["nope"]) == 2
    assert bench.main(["round", "bench.repeat=3"]) == 2
    assert "bench.repeats" in capsys.readouterr().err
    # an option of another benchmark is refused by name, a bad value by type
    assert bench.main(["round", "bench.max_users=10"]) == 2
    assert "of the round benchmark" in capsys.readouterr().err
    assert bench.main(["scale", "bench.max_users=ten"]) == 2
    assert "is not a int" in capsys.readouterr().err


def test_scale_benchmark_writes_table_picture_and_json(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Its plumbing at two tiny sizes, each measure run in this process instead of a fresh one
    (the real figures come from the real command, docs/scale.md)."""
    monkeypatch.setattr(suite, "SIZES", ((150, 1800), (300, 3600)))
    monkeypatch.setattr(suite, "ITEMS", 200)
    calls = []

    def in_process(yaml: str, kind: str, repeats: int) -> dict:
        calls.append(kind)
        return suite._measure(yaml, kind, repeats)

    monkeypatch.setattr(suite, "run_fresh", in_process)
    args = ["scale", "bench.repeats=1", f"bench.out={tmp_path}", "eval.batch_users=64"]
    assert bench.main([*args, "trainer.enable_progress_bar=false"]) == 0
    result = _last_json(capsys)
    assert calls == ["round", "round", "eval"] * 2
    assert [r["users"] for r in result["rows"]] == [150, 300]
    for row in result["rows"]:
        assert row["interactions"] > 0 and row["fedshare_round_s"] > 0 and row["eval_s"] > 0
    assert set(result["slopes"]) == {f"{k}_{w}" for k in suite.LABELS for w in ("s", "peak_gb")}
    table = (tmp_path / "scale.md").read_text()
    assert "| 150 | 200 |" in table and "| 300 | 200 |" in table
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"


def test_slope_of_a_power_law() -> None:
    xs = [1e3, 1e4, 1e5]
    assert suite.slope(xs, [2 * x for x in xs]) == pytest.approx(1.0)
    assert suite.slope(xs, [x**2 for x in xs]) == pytest.approx(2.0)
