"""The unlearning baselines fedEraser and fru: the recording hook, their stores, their runners."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from datamodules import FederatedDataModule
from fedshare.config import compose
from fedshare.federated.fedmf import FedMFClients
from fedshare.federated.fedshare import FedShareClients, GraphServer
from fedshare.federated.rounds import (
    CohortData,
    RoundPlan,
    client_round,
    client_round_reference,
    cohort_data,
    fedavg_rows,
    plan_round,
)
from fedshare.run.build import build_model
from fedshare.unlearning.context import UnlearnContext, folder_bytes
from fedshare.unlearning.contrastive import SnapshotRecorder
from fedshare.unlearning.fed_eraser import FedEraserRecorder, fed_eraser
from fedshare.unlearning.fru import FRURecorder, fru, fru_rollback
from fedshare.unlearning.history import (
    ClientUpdates,
    HistoryStore,
    RoundChanges,
    server_tables,
    top_rows,
)
from fedshare.unlearning.judge import judge
from fedshare.unlearning.retrain import retrain
from fedshare.unlearning.snapshots import SnapshotStore, snapshot_rounds
from lightning_modules.recording import RecorderCallback
from tests.conftest import model_kwargs
from tests.federated.test_rounds import _population

ROUNDS, EVERY, DIM = 6, 3, 32
ENTRY = 3  # the revoked edges entered the graph at this round (late sharers)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # two shared cores: a second intra-op thread makes the graph steps ~100x slower here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the hook: each client's own item-row updates --------------------------------------------------


def _per_client_reference(user_rows, item_table, data: CohortData, plan: RoundPlan, lr, reg, bsz):
    """``{(cohort row, item): q_ci - q_i}`` from the per-client reference, one client at a time."""
    out = {}
    for c in range(data.n_clients):
        start, end = int(data.indptr[c]), int(data.indptr[c + 1])
        if end == start:
            continue
        one = CohortData(data.users[c : c + 1], torch.tensor([0, end - start]), data.items[start:end])
        sub = RoundPlan(plan.order[:, start:end] - start, plan.negatives[:, start:end])
        _, upload, _ = client_round_reference(user_rows[c : c + 1], item_table, one, sub, lr, reg, bsz)
        touched = torch.nonzero(upload.weight_sum).squeeze(1)
        delta = upload.delta_sum[touched] / upload.weight_sum[touched].unsqueeze(1)  # w * d / w
        out.update({(c, int(i)): delta[k] for k, i in enumerate(touched)})
    return out


@pytest.mark.parametrize("epochs", [1, 2])
def test_recorded_changes_are_each_clients_own_update(epochs: int) -> None:
    indptr, items, n_users, n_items = _population(n_users=25, n_items=60, n=700)
    gen = torch.Generator().manual_seed(5)
    users = torch.randperm(n_users, generator=gen)[:15].sort().values
    data = cohort_data(users, indptr, items)
    plan = plan_round(data, n_items, epochs, gen)
    init = torch.Generator().manual_seed(6)
    user_emb = torch.randn(n_users, 8, generator=init) * 0.3
    item_emb = torch.randn(n_items, 8, generator=init) * 0.3
    args = (item_emb, data, plan, 0.5, 1e-2, 7)

    collector = RoundChanges(n_items)
    rows, upload, loss = client_round(
        user_emb[users], *args, chunk_rows=16, on_changes=collector(users, data.degrees.float() * epochs)
    )
    plain_rows, plain_upload, plain_loss = client_round(user_emb[users], *args, chunk_rows=16)
    # the hook only watches
    assert torch.equal(rows, plain_rows) and torch.equal(upload.delta_sum, plain_upload.delta_sum)
    assert torch.equal(loss, plain_loss)

    got = collector.result()
    assert torch.equal(got.users, users)
    ref = _per_client_reference(user_emb[users], *args)
    owner = got.owner
    assert {(int(c), int(i)) for c, i in zip(owner, got.items)} == set(ref)
    expected = torch.stack([ref[(int(c), int(i))] for c, i in zip(owner, got.items)])
    torch.testing.assert_close(got.deltas, expected, atol=1e-5, rtol=0)
    # weighted by the example counts, they are the round's upload
    torch.testing.assert_close(got.upload(n_items).delta_sum, upload.delta_sum, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.upload(n_items).weight_sum, upload.weight_sum)


def test_fedmf_clients_fit_passes_the_recorder() -> None:
    indptr, items, n_users, n_items = _population(n_users=20, n_items=50, n=500)
    nodes = model_kwargs("fedmf")["nodes"]
    clients = FedMFClients(n_users, 8, torch.Generator().manual_seed(0), 0.1, 2, 5, 0.5, 1e-3, 0, nodes)
    clients.train_indptr, clients.train_items, clients.n_items = indptr, items, n_items
    clients.change_recorder = collector = RoundChanges(n_items)
    cohort = torch.arange(0, n_users, 2)
    upload, _ = clients.fit(cohort, torch.randn(n_items, 8) * 0.1)
    got = collector.result()
    assert torch.equal(got.users, cohort)
    torch.testing.assert_close(got.weights, (indptr[cohort + 1] - indptr[cohort]).float() * 2)
    torch.testing.assert_close(got.upload(n_items).delta_sum, upload.delta_sum, atol=1e-5, rtol=0)


# -- a tiny run with every recorder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny: list[str], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("baselines")
    cfg = compose(
        [
            *tiny,
            f"fed.rounds={ROUNDS}",
            "logger=none",
            f"model.dim={DIM}",
            "sharing.late_fraction=0.5",
            "sharing.late_rounds=[2,4]",
        ]
    )
    pl.seed_everything(cfg.seed, verbose=False)
    dm = FederatedDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm)
    snap_rounds = snapshot_rounds(int(cfg.unlearn.snapshots), ROUNDS)  # what train() keeps for contrastive
    callbacks = [
        RecorderCallback(
            [
                FedEraserRecorder(root / "fedEraser", every=EVERY),
                FRURecorder(root / "fru", alpha=float(cfg.unlearn.fru.alpha)),
                FRURecorder(root / "fru_full", alpha=1.0),
                SnapshotRecorder(SnapshotStore(root / "snapshots"), snap_rounds),
            ]
        ),
    ]
    trainer = pl.Trainer(
        max_epochs=ROUNDS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        callbacks=callbacks,
        default_root_dir=str(root),
    )
    trainer.fit(model, datamodule=dm)
    graph = model.server.graph
    eu, ei = graph.edges()
    late = torch.nonzero(graph.edge_rounds() == ENTRY).squeeze(1)
    assert late.numel() >= 4, "the tiny run needs edges that entered late"
    users, items = eu[late[:4]], ei[late[:4]]

    def ctx(name: str, **options) -> UnlearnContext:
        return UnlearnContext(
            learned=model,
            dm=dm,
            users=users,
            items=items,
            rounds=ROUNDS,
            options={**(OmegaConf.to_container(cfg.unlearn[name]) if name in cfg.unlearn else {}), **options},
            store=root / name,
            build=lambda d: build_model(cfg, d),
        )

    return {
        "root": root,
        "model": model,
        "dm": dm,
        "users": users,
        "items": items,
        "ctx": ctx,
        "snap": snap_rounds,
    }


def _load_all(store: HistoryStore) -> dict[int, dict[str, torch.Tensor]]:
    assert store.verify() == []
    return {r: store.load(r) for r in store.rounds()}


def test_recorders_leave_no_hook_behind(run) -> None:
    assert run["model"].clients.change_recorder is None


def test_fed_eraser_stores_every_delta_rounds(run) -> None:
    model, dm = run["model"], run["dm"]
    files = _load_all(HistoryStore(run["root"] / "fedEraser"))
    assert sorted(files) == [1, 3, 6]  # round 1 and every 3
    assert sorted(p.name for p in (run["root"] / "fedEraser").iterdir()) == [
        "manifest.json",
        "round-r00001.safetensors",
        "round-r00003.safetensors",
        "round-r00006.safetensors",
    ]
    n_users, n_items = dm.n_users, dm.n_items
    server_files = _load_all(HistoryStore(run["root"] / "fru_full" / "server"))
    train_indptr, train_items = model.clients.train_indptr, model.clients.train_items
    for r, t in files.items():
        n = t["items"].numel()
        assert t["clients"].tolist() == list(range(n_users))  # cohort_fraction=1
        assert t["indptr"].shape == (n_users + 1,) and int(t["indptr"][-1]) == n
        assert t["deltas"].shape == (n, DIM) and t["deltas"].dtype == torch.float32
        assert t["user0_update"].shape == (n_users, DIM) and t["item0_update"].shape == (n_items, DIM)
        assert t["q"].shape == (n_items, DIM)
        torch.testing.assert_close(t["weights"], train_indptr.diff().float())  # example counts, E=1
        up = ClientUpdates.from_tensors(t)
        for c in range(0, n_users, 7):  # a client touched every item of its training data
            mine = set(up.items[int(up.indptr[c]) : int(up.indptr[c + 1])].tolist())
            assert set(train_items[int(train_indptr[c]) : int(train_indptr[c + 1])].tolist()) <= mine
        # the dense graph-table update is the one the server's (full) FRU record keeps in rows
        for name in ("user0", "item0"):
            dense = torch.zeros_like(t[f"{name}_update"])
            dense[server_files[r][f"{name}.rows"]] = server_files[r][f"{name}.updates"]
            torch.testing.assert_close(t[f"{name}_update"], dense)
        assert t["user0_update"].abs().sum() > 0


def test_q_after_aggregation_is_between_the_tables(run) -> None:
    # Q(after round r) = Q(after aggregation in r) + the server alignment's change in r
    fedEraser = _load_all(HistoryStore(run["root"] / "fedEraser"))
    snaps = SnapshotStore(run["root"] / "snapshots")
    q_end = snaps.load(ROUNDS)["item_emb"]
    q_agg = fedEraser[ROUNDS]["q"]
    assert not torch.allclose(q_agg, q_end)  # the alignment moved Q after aggregation
    # rolling the full record of round 6 back gives the Q the round started from
    start = fru_rollback(
        server_tables(run["model"].server), HistoryStore(run["root"] / "fru_full" / "server"), ROUNDS
    )
    devices = ClientUpdates.from_tensors(HistoryStore(run["root"] / "fru_full" / "devices").load(ROUNDS))
    expected = fedavg_rows(
        start["q"], devices.upload(start["q"].shape[0]), float(run["model"].server.server_lr)
    )
    torch.testing.assert_close(q_agg, expected, atol=1e-5, rtol=1e-5)


def test_fru_stores_top_alpha_rows_every_round(run) -> None:
    root = run["root"]
    dev, full = (
        _load_all(HistoryStore(root / "fru" / "devices")),
        _load_all(HistoryStore(root / "fru_full" / "devices")),
    )
    srv, srv_full = (
        _load_all(HistoryStore(root / "fru" / "server")),
        _load_all(HistoryStore(root / "fru_full" / "server")),
    )
    assert sorted(dev) == sorted(full) == sorted(srv) == list(range(1, ROUNDS + 1))
    for r in range(1, ROUNDS + 1):
        top, all_rows = ClientUpdates.from_tensors(dev[r]), ClientUpdates.from_tensors(full[r])
        touched = all_rows.indptr.diff()
        expected = torch.tensor([max(1, math.ceil(0.2 * int(n))) for n in touched])
        assert torch.equal(top.indptr.diff(), expected)
        for c in (0, 17, 42):
            lo, hi = int(all_rows.indptr[c]), int(all_rows.indptr[c + 1])
            klo, khi = int(top.indptr[c]), int(top.indptr[c + 1])
            kept = dict(zip(top.items[klo:khi].tolist(), top.deltas[klo:khi]))
            norms = all_rows.deltas[lo:hi].norm(dim=1)
            dropped = [float(nm) for i, nm in zip(all_rows.items[lo:hi].tolist(), norms) if i not in kept]
            assert min(float(v.norm()) for v in kept.values()) >= max(dropped, default=0.0)
            for i, v in kept.items():  # the kept rows are the client's own full update
                j = lo + all_rows.items[lo:hi].tolist().index(i)
                torch.testing.assert_close(v, all_rows.deltas[j])
        for name in ("user0", "item0", "q"):
            changed = srv_full[r][f"{name}.rows"].numel()
            assert srv[r][f"{name}.rows"].numel() == math.ceil(0.2 * changed)
            assert srv[r][f"{name}.updates"].shape == (math.ceil(0.2 * changed), DIM)
        # the round's full FedAvg denominators: replaying top rows over them keeps each step's scale
        full_weights = all_rows.upload(srv[r]["q.weight_sum"].numel()).weight_sum
        torch.testing.assert_close(srv[r]["q.weight_sum"], full_weights)
        assert (srv[r]["q.weight_sum"] >= top.upload(full_weights.numel()).weight_sum - 1e-6).all()


def test_storage_is_the_bytes_on_disk(run) -> None:
    root = run["root"]
    for name in ("fedEraser", "fru"):
        on_disk = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
        entries = [
            e for m in (root / name).rglob("manifest.json") for e in json.loads(m.read_text())["snapshots"]
        ]
        manifests = sum(m.stat().st_size for m in (root / name).rglob("manifest.json"))
        assert folder_bytes(root / name) == on_disk == sum(e["bytes"] for e in entries) + manifests
    snapshots = folder_bytes(root / "snapshots")
    assert folder_bytes(root / "fru") > snapshots > 0  # FRU keeps every round; contrastive K snapshots
    assert folder_bytes(root / "fru_full") > folder_bytes(root / "fru")


# -- the runners ---------------------------------------------------------------------------------


def _check_unlearned(run, unlearned) -> None:
    users, items = run["users"], run["items"]
    assert not unlearned.server.graph.has_edges(users, items).any()
    learned = run["model"].server.graph
    assert learned.has_edges(users, items).all()  # the learned model is untouched
    lu, li = learned.edges()
    uu, ui = unlearned.server.graph.edges()
    n = learned.n_items
    expected = set((lu * n + li).tolist()) - set((users * n + items).tolist())
    assert set((uu * n + ui).tolist()) == expected  # every other shared edge is there
    metrics = judge(unlearned, run["dm"], users, items, int(run["dm"].cfg.unlearn.k))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["test/recall@20"] > 0.1


class _Counter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fits = self.graph_steps = 0
        fit, step = FedShareClients.fit_sums, GraphServer.graph_step  # fit and run_round both go through it

        def counted_fit(clients, *a, **k):
            self.fits += 1
            return fit(clients, *a, **k)

        def counted_step(server, *a, **k):
            self.graph_steps += server.steps
            return step(server, *a, **k)

        monkeypatch.setattr(FedShareClients, "fit_sums", counted_fit)
        monkeypatch.setattr(GraphServer, "graph_step", counted_step)


def test_fed_eraser_unlearns_with_fewer_rounds_than_retrain(run, monkeypatch: pytest.MonkeyPatch) -> None:
    count = _Counter(monkeypatch)
    unlearned = fed_eraser(run["ctx"]("fedEraser", every=EVERY))
    eraser_fits, eraser_steps = count.fits, count.graph_steps
    count.fits = count.graph_steps = 0
    gold = retrain(run["ctx"]("retrain"))
    assert (count.fits, count.graph_steps) == (ROUNDS, ROUNDS * gold.server.steps)
    assert unlearned.unlearn_rounds == eraser_fits == 3  # rounds 1, 3, 6
    assert eraser_steps == 3 * round(gold.server.steps * EVERY / 2)
    assert eraser_fits < count.fits and eraser_steps < count.graph_steps
    assert unlearned.server.steps == gold.server.steps and unlearned.clients.local_epochs == 1  # restored
    _check_unlearned(run, unlearned)
    # calibration changed the tables from the fresh model's initial ones
    fresh = run["ctx"]("x").build(run["dm"])
    assert not torch.allclose(unlearned.server.item_emb, fresh.server.item_emb)


def test_fed_eraser_calibrates_to_the_stored_norms(run, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedshare.unlearning import fed_eraser as baselines

    seen = []
    calibrate = baselines.calibrate

    def spy(stored, new, n_items):
        out = calibrate(stored, new, n_items)
        seen.append((stored, new, out))
        return out

    monkeypatch.setattr(baselines, "calibrate", spy)
    fed_eraser(run["ctx"]("fedEraser", every=EVERY))
    assert len(seen) == 3
    n_items = run["dm"].n_items
    # round 1: same init, same seeds, and the revoked edges entered later: the very same updates
    stored, new, _ = seen[0]
    assert torch.equal(stored.keys(n_items), new.keys(n_items))
    torch.testing.assert_close(new.deltas, stored.deltas, atol=1e-6, rtol=0)
    for stored, new, out in seen[1:]:  # rounds 3 and 6 start from a different Q
        old = dict(zip(stored.keys(n_items).tolist(), stored.deltas.norm(dim=1).tolist()))
        keys = new.keys(n_items).tolist()
        hits = [k for k, key in enumerate(keys) if key in old]
        assert len(hits) > 0.5 * len(keys)
        new_norms = new.deltas.norm(dim=1)
        assert max(abs(float(new_norms[k]) - old[keys[k]]) for k in hits) > 1e-4  # calibration matters
        for k in hits[:: max(1, len(hits) // 50)]:
            assert float(out.deltas[k].norm()) == pytest.approx(old[keys[k]], rel=1e-4, abs=1e-7)
            if float(new_norms[k]) > 0:
                cos = torch.nn.functional.cosine_similarity(out.deltas[k], new.deltas[k], dim=0)
                assert float(cos) == pytest.approx(1.0, abs=1e-4)
        for k in sorted(set(range(len(keys))) - set(hits))[:20]:  # nothing stored: U' itself
            assert torch.equal(out.deltas[k], new.deltas[k])


def test_fru_rolls_back_and_calibrates(run) -> None:
    unlearned = fru(run["ctx"]("fru"))
    assert unlearned.unlearn_rounds == ROUNDS - ENTRY + 1  # replayed rounds 3..6
    _check_unlearned(run, unlearned)
    assert not torch.allclose(unlearned.server.item0, run["model"].server.item0)
    assert unlearned.server.steps == run["model"].server.steps


def test_fru_full_rollback_restores_the_snapshots(run) -> None:
    """With α = 1 every changed row is kept: the rollback is the recorded past, to float error."""
    store = HistoryStore(run["root"] / "fru_full" / "server")
    snaps = SnapshotStore(run["root"] / "snapshots")
    final = server_tables(run["model"].server)
    for before in run["snap"]:
        rolled = fru_rollback(final, store, before + 1)
        snap = snaps.load(before)
        for name, key in (("user0", "user0"), ("item0", "item0"), ("q", "item_emb")):
            torch.testing.assert_close(rolled[name], snap[key], atol=1e-5, rtol=0)
    # top-α rows only: an approximation, not the past
    rough = fru_rollback(final, HistoryStore(run["root"] / "fru" / "server"), 1)
    assert (rough["item0"] - snaps.load(0)["item0"]).abs().max() > 1e-4


def test_fru_rollback_algebra(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    start = {
        "user0": torch.randn(5, 3, generator=gen),
        "item0": torch.randn(7, 3, generator=gen),
        "q": torch.randn(7, 3, generator=gen),
    }
    store = HistoryStore(tmp_path / "server")
    tables = {k: v.clone() for k, v in start.items()}
    after_round = {}
    for r in (1, 2, 3):
        record = {}
        for name, table in tables.items():
            update = torch.randn(table.shape, generator=gen) * (
                torch.rand(table.shape[0], 1, generator=gen) > 0.4
            )
            table += update
            record[f"{name}.rows"], record[f"{name}.updates"] = top_rows(update, 1.0)
        after_round[r] = {k: v.clone() for k, v in tables.items()}
        store.save(r, record)
    # the revoked edges entered at round 1: back to the initial tables
    for name in start:
        torch.testing.assert_close(fru_rollback(tables, store, 1)[name], start[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(
            fru_rollback(tables, store, 3)[name], after_round[2][name], atol=1e-6, rtol=0
        )
        assert torch.equal(fru_rollback(tables, store, 4)[name], tables[name])  # nothing stored later
    # top-α keeps the largest rows only
    update = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.5, 0.0]])
    rows, kept = top_rows(update, 0.5)
    assert rows.tolist() == [0, 3] and torch.equal(kept, update[[0, 3]])


def test_top_alpha_keeps_each_clients_largest_rows() -> None:
    up = ClientUpdates(
        users=torch.tensor([2, 5]),
        weights=torch.tensor([3.0, 4.0]),
        indptr=torch.tensor([0, 4, 5]),
        items=torch.tensor([1, 2, 3, 4, 0]),
        deltas=torch.tensor([[1.0], [-4.0], [2.0], [3.0], [0.1]]),
    )
    top = up.top_alpha(0.5)
    assert top.indptr.tolist() == [0, 2, 3]
    assert top.items.tolist() == [2, 4, 0]
    assert top.deltas.squeeze(1).tolist() == [-4.0, 3.0, pytest.approx(0.1)]
