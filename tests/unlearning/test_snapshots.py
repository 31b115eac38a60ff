"""Snapshots for unlearning: round choice, verified storage, and the training callback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fedshare.unlearning.contrastive import SnapshotRecorder
from fedshare.unlearning.snapshots import SnapshotError, SnapshotStore, snapshot_rounds
from lightning_modules.recording import RecorderCallback

# -- snapshot_rounds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rounds", "expected"),
    [
        (1, 10, [0]),
        (2, 10, [0, 10]),
        (3, 10, [0, 5, 10]),
        (4, 10, [0, 3, 7, 10]),  # 3.33 -> 3, 6.67 -> 7
        (5, 2, [0, 1, 2]),  # more snapshots than rounds: each round once
        (3, 0, [0]),
        ([10, 0, 5, 5], 10, [0, 5, 10]),
        ((7,), 10, [7]),
    ],
)
def test_snapshot_rounds(spec: object, rounds: int, expected: list[int]) -> None:
    assert snapshot_rounds(spec, rounds) == expected


@pytest.mark.parametrize("spec", [0, -1, True, [], [11], [-1, 2], [1.5], ["3"], "3", 2.0, None])
def test_snapshot_rounds_rejects(spec: object) -> None:
    with pytest.raises(ValueError, match=r"unlearn\.snapshots must be an int K >= 1 or a non-empty list"):
        snapshot_rounds(spec, 10)


# -- SnapshotStore -----------------------------------------------------------------------


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "user0": torch.randn(5, 3, generator=g),
        "item_emb": torch.randn(7, 3, generator=g).t(),  # not contiguous: must still save
        "edges": torch.tensor([[0, 1], [2, 3], [4, 6]], dtype=torch.int64),
        "edge_rounds": torch.tensor([1, 1, 2], dtype=torch.int64),
    }


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    s = SnapshotStore(tmp_path / "snaps")
    s.save(0, _tensors(0))
    s.save(10, _tensors(1))
    s.save(5, _tensors(2))
    return s


def test_round_trip_keeps_values_and_dtypes(store: SnapshotStore) -> None:
    for round_, seed in [(0, 0), (5, 2), (10, 1)]:
        loaded, expected = store.load(round_), _tensors(seed)
        assert sorted(loaded) == sorted(expected)
        for k in expected:
            assert loaded[k].dtype == expected[k].dtype
            assert torch.equal(loaded[k], expected[k])
    assert store.load(0)["edges"].dtype == torch.int64
    assert store.rounds() == [0, 5, 10]
    assert store.verify() == []


def test_manifest_content(store: SnapshotStore) -> None:
    manifest = json.loads((store.folder / "manifest.json").read_text())
    assert [e["round"] for e in manifest["snapshots"]] == [0, 5, 10]
    entry = manifest["snapshots"][2]
    path = store.folder / "snapshot-r00010.safetensors"
    assert entry["file"] == path.name
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size
    assert entry["shapes"] == {"edge_rounds": [3], "edges": [3, 2], "item_emb": [3, 7], "user0": [5, 3]}
    assert entry["dtypes"] == {
        "edge_rounds": "int64",
        "edges": "int64",
        "item_emb": "float32",
        "user0": "float32",
    }


def test_saving_a_round_again_replaces_its_entry(store: SnapshotStore) -> None:
    store.save(5, {"x": torch.arange(4)})
    assert store.rounds() == [0, 5, 10]
    assert torch.equal(store.load(5)["x"], torch.arange(4))
    assert len(json.loads(store.manifest_path.read_text())["snapshots"]) == 3


def test_flipped_byte_is_refused(store: SnapshotStore) -> None:
    path = store.folder / "snapshot-r00005.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: still a parsable file, so only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"snapshot-r00005\.safetensors: sha256 mismatch"):
        store.load(5)
    assert torch.equal(store.load(0)["user0"], _tensors(0)["user0"])  # the others still load


def test_truncated_file_is_refused(store: SnapshotStore) -> None:
    path = store.folder / "snapshot-r00010.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(
        SnapshotError,
        match=rf"snapshot-r00010\.safetensors: size {size - 8} bytes, manifest says {size} bytes",
    ):
        store.load(10)


def test_deleted_file_is_refused(store: SnapshotStore) -> None:
    (store.folder / "snapshot-r00000.safetensors").unlink()
    with pytest.raises(SnapshotError, match=r"snapshot-r00000\.safetensors: missing"):
        store.load(0)


def test_unknown_round_is_refused(store: SnapshotStore) -> None:
    with pytest.raises(
        SnapshotError, match=r"manifest\.json: no snapshot at round 3 \(stored rounds: \[0, 5, 10\]\)"
    ):
        store.load(3)
    with pytest.raises(SnapshotError, match=r"manifest\.json: missing"):
        SnapshotStore(store.folder.parent / "empty").load(0)


def test_manifest_mismatch_in_shape_is_refused(store: SnapshotStore) -> None:
    manifest = json.loads(store.manifest_path.read_text())
    manifest["snapshots"][0]["shapes"]["user0"] = [5, 4]
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        SnapshotError, match=r"snapshot-r00000\.safetensors: user0 has shape \[5, 3\], manifest says \[5, 4\]"
    ):
        store.load(0)


@pytest.mark.parametrize("text", ["{not json", '{"rounds": []}', '{"snapshots": [{"round": 0}]}'])
def test_garbage_manifest_is_refused(store: SnapshotStore, text: str) -> None:
    store.manifest_path.write_text(text)
    with pytest.raises(SnapshotError, match=r"manifest\.json"):
        store.load(0)
    with pytest.raises(SnapshotError, match=r"manifest\.json"):
        store.save(1, _tensors())  # never overwrites a manifest it cannot read
    assert store.manifest_path.read_text() == text
    assert len(store.verify()) == 1 and "manifest.json" in store.verify()[0]


def test_lost_manifest_is_refused(store: SnapshotStore) -> None:
    store.manifest_path.unlink()
    with pytest.raises(SnapshotError, match=r"manifest\.json: missing, but the folder holds snapshot files"):
        store.rounds()


def test_verify_lists_every_problem(store: SnapshotStore) -> None:
    (store.folder / "snapshot-r00000.safetensors").unlink()
    path = store.folder / "snapshot-r00010.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    (store.folder / "snapshot-r00099.safetensors").write_bytes(b"stray")
    problems = store.verify()
    assert len(problems) == 3
    assert problems[0].startswith("snapshot-r00000.safetensors: missing")
    assert problems[1].startswith("snapshot-r00010.safetensors: size")
    assert problems[2] == "snapshot-r00099.safetensors: not in manifest.json"


def test_latest_before(store: SnapshotStore) -> None:
    assert [store.latest_before(r) for r in (0, 1, 5, 6, 10, 11)] == [None, 0, 0, 5, 5, 10]
    assert SnapshotStore(store.folder.parent / "none").latest_before(3) is None


def test_rewrite_scrubs_and_keeps_the_rest(store: SnapshotStore) -> None:
    before = {e["round"]: e for e in store.entries()}

    def scrub(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = t["edges"][:, 0] != 2  # user 2 revoked
        return {**t, "edges": t["edges"][keep], "edge_rounds": t["edge_rounds"][keep]}

    entry = store.rewrite(5, scrub)
    after = {e["round"]: e for e in store.entries()}
    assert entry == after[5]
    assert after[5]["sha256"] != before[5]["sha256"]
    assert after[5]["shapes"]["edges"] == [2, 2]
    assert after[0] == before[0] and after[10] == before[10]
    assert store.load(5)["edges"].tolist() == [[0, 1], [4, 6]]
    assert store.load(5)["edge_rounds"].tolist() == [1, 2]
    assert torch.equal(store.load(5)["user0"], _tensors(2)["user0"])


def test_total_bytes_and_no_temp_files(store: SnapshotStore) -> None:
    files = sorted(p.name for p in store.folder.iterdir())
    assert files == [
        "manifest.json",
        "snapshot-r00000.safetensors",
        "snapshot-r00005.safetensors",
        "snapshot-r00010.safetensors",
    ]
    assert store.total_bytes() == sum(p.stat().st_size for p in store.folder.iterdir())
    assert store.total_bytes() > 3 * (5 * 3 + 7 * 3) * 4  # at least the float data


def test_failed_write_leaves_old_snapshot(store: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedshare.unlearning.snapshots as snapshots

    def crash(tensors: dict, path: str) -> None:
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(snapshots, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(5, {"x": torch.zeros(2)})
    assert store.verify() == []
    assert torch.equal(store.load(5)["user0"], _tensors(2)["user0"])
    assert not [p for p in store.folder.iterdir() if ".tmp-" in p.name]


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    with pytest.raises(ValueError, match="round must be an int >= 0"):
        s.save(-1, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="no tensors"):
        s.save(1, {})
    with pytest.raises(ValueError, match=r"expected dict\[str, Tensor\], bad keys \['x'\]"):
        s.save(1, {"x": [1.0]})


# -- SnapshotRecorder in the RecorderCallback --------------------------------------------------------------------


class Dummy(pl.LightningModule):
    """Each round adds 1 to ``w`` and logs one edge: round r's state is known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.full((2, 3), 0.5))
        self.register_buffer("edges", torch.zeros(0, 2, dtype=torch.int64))
        self.seen: dict[int, torch.Tensor] = {}

    def training_step(self, batch: object, batch_idx: int) -> None:
        with torch.no_grad():
            self.w.add_(1.0)
        r = self.current_epoch + 1
        self.edges = torch.cat([self.edges, torch.tensor([[r, 10 * r]])])
        self.seen[r] = self.w.detach().clone()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def snapshot_tensors(self) -> dict[str, torch.Tensor]:
        return {"w": self.w, "edges": self.edges}


def test_callback_saves_exactly_the_chosen_rounds(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    module = Dummy()
    trainer = pl.Trainer(
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecorderCallback([SnapshotRecorder(store, [4, 0, 2])])],
    )
    trainer.fit(module, DataLoader([0], batch_size=1))
    assert store.rounds() == [0, 2, 4]
    for r in (0, 2, 4):
        snap = store.load(r)
        assert torch.equal(snap["w"], torch.full((2, 3), 0.5 + r))
        assert snap["edges"].tolist() == [[k, 10 * k] for k in range(1, r + 1)]
    assert torch.equal(store.load(2)["w"], module.seen[2])
    assert torch.equal(store.load(4)["w"], module.w.detach())
    assert not (store.folder / "snapshot-r00001.safetensors").exists()


def test_callback_skips_resume_and_sanity_check(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    cb = RecorderCallback([SnapshotRecorder(store, [0, 3])])
    module = Dummy()
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, current_epoch=2, logger=None)
    cb.on_train_start(trainer, module)  # resumed at round 2: round 0 was saved by the first run
    assert store.rounds() == []
    cb.on_train_epoch_end(SimpleNamespace(**{**vars(trainer), "sanity_checking": True}), module)
    cb.on_train_epoch_end(SimpleNamespace(**{**vars(trainer), "fast_dev_run": 1}), module)
    assert store.rounds() == []
    cb.on_train_epoch_end(trainer, module)
    assert store.rounds() == [3]
    cb.on_train_end(trainer, module)  # no W&B logger: nothing happens
    assert store.rounds() == [3]


def test_callback_logs_wandb_artifact(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import WandbLogger

    store = SnapshotStore(tmp_path / "snaps")
    store.save(0, {"x": torch.zeros(2)})
    logged = []
    run = SimpleNamespace(id="run42", log_artifact=logged.append)
    logger = WandbLogger(experiment=run)  # an existing run: nothing is started
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, current_epoch=0, logger=logger)
    RecorderCallback([SnapshotRecorder(store, [0])]).on_train_end(trainer, Dummy())
    assert len(logged) == 1
    assert logged[0].name == "snapshots-run42" and logged[0].type == "snapshots"
    assert sorted(logged[0].manifest.entries) == ["manifest.json", "snapshot-r00000.safetensors"]


def test_save_copies_tensors_that_share_storage(tmp_path: Path) -> None:
    # a module may hand out views of one table (e.g. user and item halves of one embedding)
    table = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    s = SnapshotStore(tmp_path)
    s.save(1, {"users": table[:2], "items": table[2:], "all": table})
    table.zero_()  # the snapshot is a copy, not the live table
    loaded = s.load(1)
    assert loaded["items"].tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
    assert torch.equal(loaded["all"], torch.arange(12, dtype=torch.float32).reshape(4, 3))
