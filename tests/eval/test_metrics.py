import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from fedshare.eval.metrics import RankingMetrics, mask_history, ranking_metrics, topk_hits

L2, L3, L4, L5 = math.log2(2), math.log2(3), math.log2(4), math.log2(5)


def _hits(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_closed_form_values():
    # User 0: 3 test items, hits at ranks 1 and 4 (1-based).
    # User 1: 1 test item, hit at rank 2.
    # User 2: 5 test items, no hit in the top 4.
    hits = _hits([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    n_target = torch.tensor([3, 1, 5])
    m = ranking_metrics(hits, n_target, ks=(2, 4))

    expected = {
        "recall@2": [1 / 3, 1.0, 0.0],
        "recall@4": [2 / 3, 1.0, 0.0],
        "ndcg@2": [(1 / L2) / (1 / L2 + 1 / L3), (1 / L3) / (1 / L2), 0.0],
        # User 0: ideal DCG over min(3, 4) = 3 ranks.
        "ndcg@4": [(1 / L2 + 1 / L5) / (1 / L2 + 1 / L3 + 1 / L4), (1 / L3) / (1 / L2), 0.0],
        "hr@2": [1.0, 1.0, 0.0],
        "hr@4": [1.0, 1.0, 0.0],
    }
    assert set(m) == set(expected)
    for key, values in expected.items():
        torch.testing.assert_close(m[key], torch.tensor(values), msg=key)


def test_perfect_ranking_has_ndcg_one():
    # 2 test items at ranks 1, 2: NDCG@3 = 1 (ideal over min(2, 3) = 2), recall@1 = 1/2.
    m = ranking_metrics(_hits([[1, 1, 0]]), torch.tensor([2]), ks=(1, 3))
    torch.testing.assert_close(m["ndcg@3"], torch.tensor([1.0]))
    torch.testing.assert_close(m["ndcg@1"], torch.tensor([1.0]))
    torch.testing.assert_close(m["recall@1"], torch.tensor([0.5]))


def test_user_without_targets_is_zero_not_nan():
    m = ranking_metrics(_hits([[0, 0], [1, 0]]), torch.tensor([0, 1]), ks=(2,))
    for value in m.values():
        assert torch.isfinite(value).all()
        assert value[0] == 0.0


def test_ks_wider_than_hits_is_an_error():
    with pytest.raises(ValueError, match="ks="):
        ranking_metrics(_hits([[1, 0]]), torch.tensor([1]), ks=(3,))


def test_mask_history_item_never_in_topk():
    scores = torch.tensor([[0.1, 9.0, 0.3, 0.2], [5.0, 0.0, 1.0, 2.0]])
    # User 0's best item (1) and user 1's best item (0) are history.
    mask_history(scores, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert scores[0, 1] == float("-inf") and scores[1, 0] == float("-inf")
    top = torch.topk(scores, 2).indices
    assert 1 not in top[0].tolist() and 0 not in top[1].tolist()
    # Targets: user 0 -> item 2, user 1 -> items 3 and 0 (0 is masked, so it cannot hit).
    hits = topk_hits(scores, torch.tensor([0, 1, 1]), torch.tensor([2, 3, 0]), k=2)
    assert hits.tolist() == [[True, False], [True, False]]


def test_topk_hits_against_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 30, generator=g)
    rows = torch.randint(0, 6, (20,), generator=g)
    cols = torch.randint(0, 30, (20,), generator=g)
    hits = topk_hits(scores, rows, cols, k=5)
    targets = {(int(r), int(c)) for r, c in zip(rows, cols)}
    top = torch.topk(scores, 5).indices
    expected = [[(b, int(top[b, r])) in targets for r in range(5)] for b in range(6)]
    assert hits.tolist() == expected


def test_topk_hits_without_targets():
    empty = torch.zeros(0, dtype=torch.long)
    hits = topk_hits(torch.rand(3, 10), empty, empty, k=4)
    assert hits.shape == (3, 4) and not hits.any()


def test_topk_hits_k_larger_than_items_pads_misses():
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    hits = topk_hits(scores, torch.tensor([0]), torch.tensor([0]), k=5)
    assert hits.tolist() == [[False, True, False, False, False]]


def test_metric_means_and_skips_empty_users():
    hits = _hits([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    n_target = torch.tensor([3, 1, 5, 0])  # the last user has no target: skipped
    metric = RankingMetrics(ks=(2, 4))
    metric.update(hits, n_target)
    out = metric.compute()
    per_user = ranking_metrics(hits[:3], n_target[:3], ks=(2, 4))
    assert set(out) == set(per_user)
    for key, values in per_user.items():
        torch.testing.assert_close(out[key], values.mean(), msg=key)
    torch.testing.assert_close(out["recall@2"], torch.tensor((1 / 3 + 1.0 + 0.0) / 3))


def test_metric_groups():
    hits = _hits([[1, 0], [0, 0], [0, 1], [1, 1]])
    n_target = torch.tensor([1, 2, 1, 0])
    groups = torch.tensor([0, 0, 2, 2])
    metric = RankingMetrics(ks=(2,), group_names=["0", "(0,0.5]", "(0.5,1)", "1"])
    metric.update(hits, n_target, groups)
    out = metric.compute()
    # Group "0": users 0, 1 -> recall@2 (1 + 0) / 2; group "(0.5,1)": only user 2 counts.
    torch.testing.assert_close(out["recall@2/share=0"], torch.tensor(0.5))
    torch.testing.assert_close(out["hr@2/share=(0.5,1)"], torch.tensor(1.0))
    torch.testing.assert_close(out["ndcg@2/share=(0.5,1)"], torch.tensor(1 / L3))
    torch.testing.assert_close(out["recall@2"], torch.tensor((1.0 + 0.0 + 1.0) / 3))
    # Groups with no counted user are left out.
    assert not any(key.endswith("share=(0,0.5]") or key.endswith("share=1") for key in out)


def test_metric_groups_required_when_named():
    metric = RankingMetrics(ks=(1,), group_names=["a", "b"])
    with pytest.raises(ValueError, match="groups"):
        metric.update(_hits([[1]]), torch.tensor([1]))


def test_accumulation_equals_one_update():
    g = torch.Generator().manual_seed(1)
    hits = torch.rand(100, 20, generator=g) < 0.2
    n_target = torch.randint(0, 8, (100,), generator=g)
    n_target = torch.maximum(n_target, hits.sum(1))  # cannot hit more items than there are targets
    groups = torch.randint(0, 3, (100,), generator=g)
    names = ["a", "b", "c"]

    once = RankingMetrics(ks=(5, 10, 20), group_names=names)
    once.update(hits, n_target, groups)
    batched = RankingMetrics(ks=(5, 10, 20), group_names=names)
    for start in range(0, 100, 17):
        sl = slice(start, start + 17)
        batched.update(hits[sl], n_target[sl], groups[sl])
    a, b = once.compute(), batched.compute()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_agrees_with_torchmetrics_retrieval():
    g = torch.Generator().manual_seed(2)
    n_users, n_items, k = 50, 200, 20
    scores = torch.rand(n_users, n_items, generator=g)
    target = torch.rand(n_users, n_items, generator=g) < 0.05
    target[:3] = False  # users without targets are skipped by both
    target[3, :30] = True  # more targets than K: ideal DCG truncated at K
    rows, cols = target.nonzero(as_tuple=True)
    n_target = target.sum(1)

    hits = topk_hits(scores, rows, cols, k)
    metric = RankingMetrics(ks=(10, k))
    metric.update(hits, n_target)
    ours = metric.compute()

    indexes = torch.arange(n_users).unsqueeze(1).expand(n_users, n_items).reshape(-1)
    for kk in (10, k):
        recall = RetrievalRecall(top_k=kk, empty_target_action="skip")
        ndcg = RetrievalNormalizedDCG(top_k=kk, empty_target_action="skip")
        ref_recall = recall(scores.reshape(-1), target.reshape(-1), indexes=indexes)
        ref_ndcg = ndcg(scores.reshape(-1), target.reshape(-1), indexes=indexes)
        torch.testing.assert_close(ours[f"recall@{kk}"], ref_recall, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[f"ndcg@{kk}"], ref_ndcg, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    scores = torch.rand(4, 50, device="cuda")
    mask_history(scores, torch.tensor([0, 1], device="cuda"), torch.tensor([3, 4], device="cuda"))
    hits = topk_hits(scores, torch.tensor([0, 2], device="cuda"), torch.tensor([1, 7], device="cuda"), 10)
    metric = RankingMetrics(ks=(5, 10), group_names=["x", "y"]).to("cuda")
    metric.update(hits, torch.tensor([1, 0, 1, 0], device="cuda"), torch.tensor([0, 0, 1, 1], device="cuda"))
    out = metric.compute()
    assert out["recall@10"].device.type == "cuda"


@pytest.mark.parametrize("n_items", [4 * 20 * 128, 100_003])
def test_block_topk_is_torch_topk(n_items: int) -> None:
    """The two-stage top-k (block maxima, then the best blocks) returns torch.topk's items, in
    order, with masked (-inf) history and a partial last block."""
    from fedshare.eval.ranking import block_topk

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(9, n_items, generator=g)
    scores[0, : n_items // 2] = float("-inf")  # half the row is history
    scores[1, -50:] += 10  # the best items in the partial last block
    scores[2, 128 * 7 : 128 * 8] += 10  # all the best items in one block
    assert torch.equal(block_topk(scores, 20), torch.topk(scores, 20, dim=1).indices)
    assert torch.equal(block_topk(scores[:, :300], 20), torch.topk(scores[:, :300], 20, dim=1).indices)
