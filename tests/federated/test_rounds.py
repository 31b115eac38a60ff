"""The vectorized round against the per-client reference, and the protocol boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshare.data.interactions import Split, to_csr
from fedshare.federated.losses import bpr_grads
from fedshare.federated.rounds import (
    CohortData,
    RoundPlan,
    Upload,
    client_round,
    client_round_reference,
    cohort_data,
    fedavg_rows,
    plan_round,
    sample_cohort,
    sample_negatives,
    shuffle_within_clients,
)


def _population(n_users: int = 40, n_items: int = 90, n: int = 1500, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = (rng.zipf(1.3, n) - 1) % n_items  # skewed: popular items shared by many clients
    keys = np.unique(users * n_items + items)
    csr = to_csr(Split(keys // n_items, keys % n_items), n_users, n_items)
    return torch.from_numpy(csr.indptr), torch.from_numpy(csr.items), n_users, n_items


@pytest.mark.parametrize(
    ("fraction", "epochs", "batch_size"),
    [(1.0, 1, 32), (0.5, 1, 5), (1.0, 2, 7), (0.7, 3, 0)],
)
def test_vectorized_round_equals_per_client_reference(fraction: float, epochs: int, batch_size: int) -> None:
    indptr, items, n_users, n_items = _population()
    gen = torch.Generator().manual_seed(3)
    users = sample_cohort(n_users, fraction, gen)
    data = cohort_data(users, indptr, items)
    plan = plan_round(data, n_items, epochs, gen)
    init = torch.Generator().manual_seed(4)
    user_emb = torch.randn(n_users, 8, generator=init) * 0.3
    item_emb = torch.randn(n_items, 8, generator=init) * 0.3

    rows, upload, loss = client_round(
        user_emb[users], item_emb, data, plan, 0.5, 1e-2, batch_size, chunk_rows=16
    )
    ref_rows, ref_upload, ref_loss = client_round_reference(
        user_emb[users], item_emb, data, plan, 0.5, 1e-2, batch_size
    )

    torch.testing.assert_close(rows, ref_rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(upload.weight_sum, ref_upload.weight_sum)
    torch.testing.assert_close(
        fedavg_rows(item_emb, upload, 2.0), fedavg_rows(item_emb, ref_upload, 2.0), atol=1e-5, rtol=0
    )
    assert abs(float(loss) - float(ref_loss)) < 1e-5
    assert not torch.equal(rows, user_emb[users])  # it did train


def test_same_seed_same_round_different_seed_different_round() -> None:
    indptr, items, n_users, n_items = _population()

    def one_round(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        data = cohort_data(sample_cohort(n_users, 0.5, gen), indptr, items)
        plan = plan_round(data, n_items, 1, gen)
        item_emb = torch.ones(n_items, 4) * 0.1
        _, upload, _ = client_round(torch.ones(data.n_clients, 4) * 0.1, item_emb, data, plan, 0.1, 0.0, 4)
        return fedavg_rows(item_emb, upload, server_lr=1.0)

    assert torch.equal(one_round(1), one_round(1))
    assert not torch.equal(one_round(1), one_round(2))


def test_negatives_are_never_the_clients_own_items() -> None:
    indptr, items, n_users, n_items = _population(n_users=30, n_items=25, n=600)
    data = cohort_data(torch.arange(n_users), indptr, items)
    for dense_limit in (1 << 30, 0):  # bit table and binary search
        neg = sample_negatives(data, n_items, 3, torch.Generator().manual_seed(0), dense_limit=dense_limit)
        owner = data.owner
        for e in range(3):
            for k in range(data.items.numel()):
                assert int(neg[e, k]) not in set(data.client(int(owner[k])).tolist())


def test_a_client_holding_every_item_is_a_clear_error() -> None:
    data = CohortData(torch.tensor([0]), torch.tensor([0, 3]), torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="every item"):
        sample_negatives(data, 3, 1, torch.Generator().manual_seed(0))


def test_shuffle_stays_within_each_client() -> None:
    indptr, items, n_users, _ = _population()
    data = cohort_data(torch.arange(n_users), indptr, items)
    order = shuffle_within_clients(data, 2, torch.Generator().manual_seed(0))
    for e in range(2):
        assert torch.equal(order[e].sort().values, torch.arange(data.items.numel()))
        assert torch.equal(data.owner[order[e]], data.owner)  # each segment is a permutation of itself


def test_cohort_sampling() -> None:
    gen = torch.Generator().manual_seed(0)
    cohort = sample_cohort(100, 0.25, gen)
    assert cohort.numel() == 25 and torch.equal(cohort, cohort.sort().values)
    assert cohort.unique().numel() == 25
    assert torch.equal(sample_cohort(100, 1.0, gen), torch.arange(100))
    assert sample_cohort(3, 0.01, gen).numel() == 1


def test_client_step_sees_only_its_own_data() -> None:
    """Changing another client's data (and its draws) leaves this client's result unchanged."""
    indptr, items, n_users, n_items = _population()
    data = cohort_data(torch.arange(n_users), indptr, items)
    plan = plan_round(data, n_items, 1, torch.Generator().manual_seed(5))
    user_emb = torch.randn(n_users, 6, generator=torch.Generator().manual_seed(6)) * 0.2
    item_emb = torch.randn(n_items, 6, generator=torch.Generator().manual_seed(7)) * 0.2
    rows, _, _ = client_round(user_emb, item_emb, data, plan, 0.3, 0.0, 4)

    other = 1
    lo, hi = int(data.indptr[other]), int(data.indptr[other + 1])
    changed_items = data.items.clone()
    changed_items[lo:hi] = (changed_items[lo:hi] + 1) % n_items
    changed_items[lo:hi] = changed_items[lo:hi].sort().values
    changed = CohortData(data.users, data.indptr, changed_items)
    negatives = plan.negatives.clone()
    negatives[:, lo:hi] = torch.tensor(
        [next(j for j in range(n_items) if j not in set(changed_items[lo:hi].tolist()))] * (hi - lo)
    )
    rows2, _, _ = client_round(user_emb, item_emb, changed, RoundPlan(plan.order, negatives), 0.3, 0.0, 4)

    keep = torch.ones(n_users, dtype=torch.bool)
    keep[other] = False
    assert torch.equal(rows[keep], rows2[keep])
    assert not torch.equal(rows[other], rows2[other])


def test_server_step_is_fedavg_per_row_and_needs_only_uploads() -> None:
    item_table = torch.zeros(3, 2)
    # client a (3 examples) moved row 0 by +1; client b (1 example) moved rows 0 and 2 by -1
    a = Upload.from_rows(torch.tensor([0]), torch.tensor([[1.0, 1.0]]), 3.0, 3)
    b = Upload.from_rows(torch.tensor([0, 2]), torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]), 1.0, 3)
    new = fedavg_rows(item_table, a + b, server_lr=1.0)
    torch.testing.assert_close(new[0], torch.tensor([0.5, 0.5]))  # (3*1 + 1*-1) / 4
    torch.testing.assert_close(new[1], torch.tensor([0.0, 0.0]))  # nobody touched row 1
    torch.testing.assert_close(new[2], torch.tensor([-1.0, -1.0]))
    # sums add up: two nodes' partial uploads aggregate like one
    torch.testing.assert_close(fedavg_rows(item_table, b + a, server_lr=1.0), new)


def test_bpr_grads_match_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    p, qp, qn = (torch.randn(5, 4, generator=gen, requires_grad=True) for _ in range(3))
    w = torch.rand(5, generator=gen)
    reg = 0.1
    x = (p * (qp - qn)).sum(-1)
    loss = (
        w * (-torch.nn.functional.logsigmoid(x) + reg / 2 * (p.pow(2) + qp.pow(2) + qn.pow(2)).sum(-1))
    ).sum()
    loss.backward()
    dp, dpos, dneg, per_example = bpr_grads(p.detach(), qp.detach().clone(), qn.detach().clone(), w, reg)
    torch.testing.assert_close(dp, p.grad)
    torch.testing.assert_close(dpos, qp.grad)
    torch.testing.assert_close(dneg, qn.grad)
    torch.testing.assert_close(per_example.sum(), (w * -torch.nn.functional.logsigmoid(x)).sum().detach())
