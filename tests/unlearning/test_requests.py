"""Unsharing requests: CSV errors name their line, drawn requests are reproducible, and the
ledger resumes an interrupted unlearning with every request applied exactly once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fedshare.unlearning.requests import (
    RequestError,
    RequestLedger,
    UnshareRequest,
    check_requests,
    draw_requests,
    read_requests_csv,
    write_requests_csv,
)


def write(tmp_path: Path, text: str, name: str = "req.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# UnshareRequest


def test_request_pairs_and_validation() -> None:
    users, items = UnshareRequest(3, (1, 4)).pairs()
    assert users.tolist() == [3, 3] and items.tolist() == [1, 4]
    assert users.dtype == torch.int64 and items.dtype == torch.int64
    assert UnshareRequest(3, (1, 4), lines=(7, 9)) == UnshareRequest(3, (1, 4))  # lines not compared
    for items_bad in [(), (4, 1), (1, 1), (-1,)]:
        with pytest.raises(RequestError):
            UnshareRequest(0, items_bad)
    with pytest.raises(RequestError, match="2 entries for 1 items"):
        UnshareRequest(0, (1,), lines=(1, 2))


# ----------------------------------------------------------------------------------------------
# CSV


def test_read_groups_dedups_and_skips(tmp_path: Path) -> None:
    path = write(
        tmp_path, "# revoked by support ticket 12\n user , item \n\n5,3\n2, 9\n5,1\n  # note\n5,3\n2,0\n"
    )
    reqs = read_requests_csv(path, n_users=10, n_items=10)
    assert reqs == [UnshareRequest(5, (1, 3)), UnshareRequest(2, (0, 9))]
    assert [r.lines for r in reqs] == [(6, 4), (9, 5)]  # first line of each item, in item order


def test_read_header_only_is_empty(tmp_path: Path) -> None:
    assert read_requests_csv(write(tmp_path, "user,item\n"), 3, 3) == []
    assert read_requests_csv(write(tmp_path, "user,item"), 3, 3) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"req.csv: missing the header 'user,item'"),
        ("# only a comment\n", r"req.csv: missing the header"),
        ("1,2\n", r"req.csv:1: expected the header 'user,item', got '1,2'"),
        ("\nuser,items\n1,2\n", r"req.csv:2: expected the header 'user,item', got 'user,items'"),
        ("user,item\n1,2\n1,2,3\n", r"req.csv:3: expected 2 fields 'user,item', got 3"),
        ("user,item\n1\n", r"req.csv:2: expected 2 fields 'user,item', got 1"),
        ("user,item\n1,2\n\n1,x\n", r"req.csv:4: item 'x' is not an integer; ids are non-negative integers"),
        ("user,item\n1.0,2\n", r"req.csv:2: user '1.0' is not an integer"),
        ("user,item\n+1,2\n", r"req.csv:2: user '\+1' is not an integer"),
        ("user,item\n-1,2\n", r"req.csv:2: negative user -1: ids are non-negative integers"),
        ("user,item\n1,-2\n", r"req.csv:2: negative item -2"),
        ("user,item\n1,2\n123,2\n", r"req.csv:3: unknown user 123: users are 0..9"),
        ("user,item\n1,20\n", r"req.csv:2: unknown item 20: items are 0..19"),
    ],
)
def test_read_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        read_requests_csv(write(tmp_path, text), n_users=10, n_items=20)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match=r"nope.csv: no such requests file.*'user,item'"):
        read_requests_csv(tmp_path / "nope.csv", 1, 1)


def test_write_read_round_trip(tmp_path: Path) -> None:
    reqs = [UnshareRequest(4, (0, 2, 7)), UnshareRequest(1, (5,)), UnshareRequest(9, (3, 8))]
    path = tmp_path / "sub" / "out.csv"
    write_requests_csv(path, reqs)
    assert path.read_text() == "user,item\n4,0\n4,2\n4,7\n1,5\n9,3\n9,8\n"
    assert read_requests_csv(path, n_users=10, n_items=10) == reqs
    write_requests_csv(path, [])  # replaces the old file
    assert read_requests_csv(path, 10, 10) == []
    assert [p.name for p in path.parent.iterdir()] == ["out.csv"]  # no temp file left


# ----------------------------------------------------------------------------------------------
# check_requests


def set_lookup(pairs: set[tuple[int, int]]):
    def lookup(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.tensor(
            [(u, i) in pairs for u, i in zip(users.tolist(), items.tolist())], dtype=torch.bool
        )

    return lookup


def test_check_drops_already_revoked(tmp_path: Path) -> None:
    shared = {(0, 1), (0, 2), (3, 7), (5, 5)}
    revoked = {(0, 3), (4, 4)}
    reqs = [UnshareRequest(0, (1, 3), lines=(2, 3)), UnshareRequest(4, (4,)), UnshareRequest(3, (7,))]
    out = check_requests(reqs, set_lookup(shared), set_lookup(revoked))
    assert out == [UnshareRequest(0, (1,)), UnshareRequest(3, (7,))]
    assert out[0].lines == (2,)
    assert check_requests([], set_lookup(shared)) == []


def test_check_never_shared_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "user,item\n0,1\n3,7\n3,8\n3,9\n")
    reqs = read_requests_csv(path, 10, 10)
    with pytest.raises(RequestError) as err:
        check_requests(reqs, set_lookup({(0, 1), (3, 7)}), source=str(path))
    assert str(err.value) == (
        f"{path}:4: (user 3, item 8) was never shared with the server (and 1 more such pairs); "
        "only shared pairs can be unshared"
    )
    # Without lines, the source alone; a pair revoked earlier is not an error.
    with pytest.raises(
        RequestError, match=r"^requests: \(user 3, item 8\) was never shared with the server;"
    ):
        check_requests([UnshareRequest(3, (7, 8))], set_lookup({(3, 7)}))
    assert check_requests([UnshareRequest(3, (8,))], set_lookup(set()), set_lookup({(3, 8)})) == []


def test_check_rejects_a_bad_answer() -> None:
    with pytest.raises(TypeError, match="is_shared.*bool tensor of shape \\(2,\\)"):
        check_requests([UnshareRequest(0, (1, 2))], lambda u, i: torch.ones(2))


# ----------------------------------------------------------------------------------------------
# draw_requests


def edges() -> tuple[torch.Tensor, torch.Tensor]:
    """10 sharing users; user u shares items u..u+2u (u + 1 items), user 10 shares nothing."""
    pairs = [(u, u + k) for u in range(10) for k in range(u + 1)]
    users, items = zip(*pairs)
    return torch.tensor(users), torch.tensor(items)


def test_draw_sizes_and_membership() -> None:
    users, items = edges()
    shared = set(zip(users.tolist(), items.tolist()))
    reqs = draw_requests(users, items, user_fraction=0.3, item_fraction=0.5, seed=0)
    assert len(reqs) == 3 and [r.user for r in reqs] == sorted(r.user for r in reqs)
    for r in reqs:
        assert len(r.items) == max(1, round(0.5 * (r.user + 1)))
        assert all((r.user, i) in shared for i in r.items)
    everything = draw_requests(users, items, 1.0, 1.0, seed=5)
    assert [(r.user, len(r.items)) for r in everything] == [(u, u + 1) for u in range(10)]
    tiny = draw_requests(users, items, 0.01, 0.0, seed=5)  # at least one user, one item each
    assert len(tiny) == 1 and len(tiny[0].items) == 1


def test_draw_is_deterministic_and_order_free() -> None:
    users, items = edges()
    a = draw_requests(users, items, 0.5, 0.5, seed=1)
    assert draw_requests(users, items, 0.5, 0.5, seed=1) == a
    perm = torch.randperm(len(users), generator=torch.Generator().manual_seed(9))
    assert draw_requests(users[perm], items[perm], 0.5, 0.5, seed=1) == a
    draws = {tuple(draw_requests(users, items, 0.5, 0.5, seed=s)) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    assert (
        draw_requests(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 1.0, 1.0, 0) == []
    )


def test_draw_is_uniform_over_users_and_items() -> None:
    users, items = edges()
    counts = torch.zeros(10)
    for s in range(150):
        for r in draw_requests(users, items, 0.2, 0.0, seed=s):
            counts[r.user] += 1
    assert counts.sum() == 300 and counts.min() > 12 and counts.max() < 50  # expected 30 each
    one_user = torch.zeros(10, dtype=torch.int64), torch.arange(10)
    counts.zero_()
    for s in range(150):
        (r,) = draw_requests(*one_user, 1.0, 0.2, seed=s)
        counts[list(r.items)] += 1
    assert counts.sum() == 300 and counts.min() > 12 and counts.max() < 50  # 2 of 10 items: 30 each


@pytest.mark.parametrize(
    ("uf", "itf", "key"),
    [
        (0.0, 0.5, "unlearn.requests.user_fraction must be a number in \\(0, 1\\], got 0.0"),
        (1.5, 0.5, "unlearn.requests.user_fraction"),
        (True, 0.5, "unlearn.requests.user_fraction"),
        (0.5, -0.1, "unlearn.requests.item_fraction must be a number in \\[0, 1\\], got -0.1"),
        (0.5, float("nan"), "unlearn.requests.item_fraction"),
    ],
)
def test_draw_rejects_fractions(uf: float, itf: float, key: str) -> None:
    users, items = edges()
    with pytest.raises(RequestError, match=key):
        draw_requests(users, items, uf, itf, seed=0)


# ----------------------------------------------------------------------------------------------
# RequestLedger


R0, R1, R2, R3 = (
    UnshareRequest(0, (1, 2)),
    UnshareRequest(3, (4,)),
    UnshareRequest(0, (5,)),
    UnshareRequest(7, (0,)),
)


def test_ledger_add_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "run" / "unlearn" / "ledger.jsonl"
    ledger = RequestLedger(path)
    assert ledger.requests() == {} and ledger.add([]) == []
    assert not path.parent.exists()  # nothing on disk until the first entry
    assert ledger.add([R0, R1, R0]) == [0, 1, 0]
    assert ledger.add([UnshareRequest(3, (4,), lines=(9,)), R2]) == [1, 2]
    assert ledger.requests() == {0: R0, 1: R1, 2: R2}
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"kind": "request", "id": 0, "user": 0, "items": [1, 2]},
        {"kind": "request", "id": 1, "user": 3, "items": [4]},
        {"kind": "request", "id": 2, "user": 0, "items": [5]},
    ]
    users, items = ledger.revoked_pairs()
    assert users.tolist() == [0, 0, 0, 3] and items.tolist() == [1, 2, 5, 4]
    assert RequestLedger(path).add([R2, R3]) == [2, 3]  # ids survive reopening


def test_ledger_applied_and_pending(tmp_path: Path) -> None:
    ledger = RequestLedger(tmp_path / "ledger.jsonl")
    ledger.add([R0, R1, R2])
    ledger.mark_applied("fedshare", 1, time_s=0.25)
    ledger.mark_applied("retrain", 0)
    assert ledger.applied("fedshare") == {1} and ledger.applied("retrain") == {0}
    assert ledger.pending("fedshare") == [(0, R0), (2, R2)]
    assert ledger.pending("other") == [(0, R0), (1, R1), (2, R2)]
    with pytest.raises(
        RequestError, match=r"request 1 was already applied by method 'fedshare' \(.*ledger.jsonl:4\)"
    ):
        ledger.mark_applied("fedshare", 1)
    with pytest.raises(RequestError, match=r"unknown request id 9; recorded ids are 0..2"):
        ledger.mark_applied("fedshare", 9)
    with pytest.raises(RequestError, match="not JSON-serialisable"):
        ledger.mark_applied("fedshare", 0, model=object())
    reopened = RequestLedger(tmp_path / "ledger.jsonl")  # failed calls wrote nothing
    assert reopened.applied("fedshare") == {1} and reopened.pending("retrain") == [(1, R1), (2, R2)]
    assert json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[3]) == {
        "kind": "applied",
        "method": "fedshare",
        "id": 1,
        "time_s": 0.25,
    }


def test_ledger_appends_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedshare.unlearning.requests as mod

    synced: list[int] = []
    real = mod.os.fsync
    monkeypatch.setattr(mod.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ledger = RequestLedger(tmp_path / "ledger.jsonl")
    assert synced == []  # opening a ledger that does not exist yet writes nothing
    ledger.add([R0, R1])  # the first entry creates the file: the file and its folder are synced
    assert len(synced) == 2
    ledger.mark_applied("m", 0)
    assert len(synced) == 3


def test_ledger_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = RequestLedger(path)
    ledger.add([R0, R1])
    ledger.mark_applied("m", 0)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"kind": "applied", "method": "m", "id"')  # crash during the write
    with pytest.warns(UserWarning, match=r"ledger.jsonl:4: dropped an incomplete last line"):
        reopened = RequestLedger(path)
    assert path.read_bytes() == good  # repaired
    assert reopened.pending("m") == [(1, R1)]
    reopened.mark_applied("m", 1)
    assert RequestLedger(path).pending("m") == []

    path.write_bytes(good + b"\x00\x00garbage\n")  # newline-terminated but unparsable last line
    with pytest.warns(UserWarning, match=r":4: dropped"):
        assert RequestLedger(path).applied("m") == {0}
    assert path.read_bytes() == good


def test_ledger_corrupted_middle_line_raises(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    RequestLedger(path).add([R0, R1, R2])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"kind": "request", "id": 1, "us\n' + lines[2])
    with pytest.raises(RequestError, match=re.escape(f"{path}:2: not a ledger entry")):
        RequestLedger(path)
    path.write_text(lines[0] + lines[2])  # a lost line: ids no longer consecutive
    with pytest.raises(RequestError, match=re.escape(f"{path}:2: request id 2 out of order; expected 1")):
        RequestLedger(path)
    path.write_text(lines[0] + '{"kind": "applied", "method": "m", "id": 0}\n' * 2)
    with pytest.raises(
        RequestError, match=re.escape(f"{path}:3: request 0 was already applied by method 'm' ({path}:2)")
    ):
        RequestLedger(path)


def test_ledger_crash_between_requests_resumes_exactly(tmp_path: Path) -> None:
    path = tmp_path / "run" / "unlearn" / "ledger.jsonl"
    applied: list[int] = []  # what the "model" has unlearned, across both runs

    def run(stop_after: int | None) -> None:
        ledger = RequestLedger(path)
        ledger.add([R0, R1, R2, R3])  # the same requests on every start: a no-op the second time
        for n, (k, _) in enumerate(ledger.pending("fedshare")):
            if stop_after is not None and n == stop_after:
                return  # crash: the object is dropped without any closing
            applied.append(k)
            ledger.mark_applied("fedshare", k, time_s=0.1)

    run(stop_after=2)
    assert applied == [0, 1]
    assert [k for k, _ in RequestLedger(path).pending("fedshare")] == [2, 3]
    run(stop_after=None)
    assert applied == [0, 1, 2, 3]  # every request exactly once
    ledger = RequestLedger(path)
    assert ledger.pending("fedshare") == [] and ledger.applied("fedshare") == {0, 1, 2, 3}
    assert len(ledger.requests()) == 4


def test_compact_forgets_items_keeps_ids_and_marks(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = RequestLedger(path)
    ids = ledger.add([UnshareRequest(3, (1, 2)), UnshareRequest(5, (7,))])
    for k in ids:
        ledger.mark_applied("server", k, time_s=0.1)
    ledger.compact()
    text = path.read_text()
    assert '"items"' not in text and '"closed"' in text
    assert ledger.requests() == {} and ledger.closed() == {0: (3, 2), 1: (5, 1)}
    again = RequestLedger(path)  # replays the compacted file
    assert again.closed() == {0: (3, 2), 1: (5, 1)} and again.applied("server") == {0, 1}
    assert again.add([UnshareRequest(3, (9,))]) == [2]  # ids go on after the closed ones
    with pytest.raises(RequestError, match="already applied"):
        again.mark_applied("server", 0)
