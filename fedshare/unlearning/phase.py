"""The unlearning phase of a run: requests -> ledger -> deletion -> methods -> judging.

``python -m fedshare.train experiment=fedshare_unlearn`` runs it right after learning. On a
finished run (or one that crashed while unlearning)::

    python -m fedshare.unlearn run_dir=RUN [requests=FILE.csv] [method=contrastive | methods=[a,b]]

The run folder's ``unlearn/ledger.jsonl`` is the server's request log: a request is recorded
before anything is deleted, and marked applied (once, by ``server``) when its pairs are gone
from the server's stores. The learned checkpoint is the base and the ledger the log: a
process that dies between two requests is resumed by the same command, which replays the
applied requests (their pairs are deleted again in memory, never marked twice) and applies the
pending ones. When every method has run, the server's files are scrubbed: the checkpoints (last and best) hold
the unlearned model (of the first method) and the edited graph, fedEraser's stored client rows lose
the revoked pairs, and the ledger keeps ids, users and counts only. The revoked pairs
themselves stay on the devices (``unlearn/devices/revoked.csv``: the users' own record of what
they took back, like their local data; no server code reads it).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from fedshare.atomic import replace_file
from fedshare.eval.selection import selected_round
from fedshare.unlearning.context import UnlearnContext, folder_bytes
from fedshare.unlearning.contrastive import snapshot_dir
from fedshare.unlearning.history import ClientUpdates, HistoryStore
from fedshare.unlearning.judge import judge
from fedshare.unlearning.registry import METHODS, run_method, store_dir
from fedshare.unlearning.requests import (
    RequestLedger,
    UnshareRequest,
    check_requests,
    draw_requests,
    read_requests_csv,
    write_requests_csv,
)
from fedshare.unlearning.snapshots import SnapshotStore

log = logging.getLogger(__name__)
SERVER = "server"  # the ledger's name for the deletion from the server's stores
ENV_KILL_AT_REQUEST = "FEDSHARE_FAULT_KILL_AT_REQUEST"


def _kill_if_asked(done: int) -> None:
    value = os.environ.get(ENV_KILL_AT_REQUEST)
    if value and int(value) == done + 1:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash test: as if the machine lost power


def _pairs(requests: list[UnshareRequest]) -> tuple[torch.Tensor, torch.Tensor]:
    if not requests:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    users, items = zip(*(r.pairs() for r in requests))
    return torch.cat(users), torch.cat(items)


def device_record(run_dir: Path) -> Path:
    """The devices' own list of the pairs their users took back (device-side, not the server's)."""
    return run_dir / "unlearn" / "devices" / "revoked.csv"


def revoked_before(run_dir: Path, ledger: RequestLedger, n_users: int, n_items: int):
    """Pairs revoked earlier: the ledger's open requests and the devices' record (after the
    ledger was compacted, only the devices know the pairs; a device drops a repeated request)."""
    users, items = ledger.revoked_pairs()
    record = device_record(run_dir)
    if record.exists():
        du, di = _pairs(read_requests_csv(record, n_users, n_items))
        users, items = torch.cat([users, du]), torch.cat([items, di])
    return users, items


def _as_requests(users: torch.Tensor, items: torch.Tensor) -> list[UnshareRequest]:
    pairs = (
        torch.unique(torch.stack([users, items], 1), dim=0)
        if users.numel()
        else torch.empty(0, 2, dtype=torch.int64)
    )
    out = []
    for u in torch.unique(pairs[:, 0]).tolist():
        out.append(UnshareRequest(int(u), tuple(pairs[pairs[:, 0] == u, 1].tolist())))
    return out


def gather_requests(
    ucfg: DictConfig, model, dm, ledger: RequestLedger, requests_file: str | None, run_dir: Path
):
    """New requests (from a CSV, or drawn when the ledger has none yet), checked against the graph."""
    graph = model.server.graph
    revoked_u, revoked_i = revoked_before(run_dir, ledger, dm.n_users, dm.n_items)
    revoked_keys = revoked_u * dm.n_items + revoked_i

    def already(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.isin(users * dm.n_items + items, revoked_keys)

    path = requests_file or ucfg.requests.file
    if path:
        found = read_requests_csv(Path(path), dm.n_users, dm.n_items)
        return check_requests(found, graph.has_edges, already, source=str(path))
    if ledger.requests() or ledger.closed():
        return []  # drawn earlier (a resumed or finished run): the ledger holds them
    r = ucfg.requests
    users, items = graph.edges()
    drawn = draw_requests(users, items, float(r.user_fraction), float(r.item_fraction), int(r.seed))
    return check_requests(drawn, graph.has_edges, already, source="unlearn.requests")


def apply_deletions(model, ledger: RequestLedger) -> tuple[torch.Tensor, torch.Tensor]:
    """Every recorded request's pairs leave the model's server stores; pending ones get marked.

    Returns all pairs of this session's requests (applied earlier or now)."""
    applied = ledger.applied(SERVER)
    graph = model.server.graph
    done = 0
    all_u, all_i = [], []
    for rid, request in sorted(ledger.requests().items()):
        users, items = request.pairs()
        present = graph.has_edges(users, items)
        if rid in applied:  # replay: the base checkpoint may still hold them
            if present.any():
                model.unshare(users[present], items[present], refresh=False)
        else:
            _kill_if_asked(done)
            if not present.all():  # a scrubbed base lost them: nothing left to delete there
                users, items = users[present], items[present]
            t0 = time.perf_counter()
            removed = model.unshare(users, items, refresh=False) if users.numel() else 0
            ledger.mark_applied(SERVER, rid, removed=int(removed), time_s=time.perf_counter() - t0)
            done += 1
        ru, ri = request.pairs()
        all_u.append(ru)
        all_i.append(ri)
    model.server.refresh_views()
    if not all_u:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    return torch.cat(all_u), torch.cat(all_i)


def unlearn_phase(
    cfg: DictConfig,
    model,
    dm,
    run_dir: Path,
    build,
    methods: list[str] | None = None,
    requests_file: str | None = None,
    logger=None,
    judge_fn=judge,
    on_deleted=None,
) -> dict[str, float]:
    """Requests -> deletion -> each method on a copy of the learned model -> judged metrics.

    ``model`` is the learned FedShare module (its graph still holds the revoked edges);
    ``build(dm)`` makes a fresh module with the run's config (retrain). Returns the flat
    ``learn/...`` and ``unlearn/<method>/...`` metrics (the run driver puts them into metrics.json).
    On Flower (`fedshare.flower.apps`) the clients are elsewhere: ``judge_fn`` judges through
    the nodes and ``on_deleted(users, items)`` tells the devices which pairs are local again.
    """
    ucfg = cfg.unlearn
    methods = list(methods if methods is not None else ucfg.methods)
    k = int(ucfg.k)
    udir = run_dir / "unlearn"
    ledger = RequestLedger(udir / "ledger.jsonl")
    new = gather_requests(ucfg, model, dm, ledger, requests_file, run_dir)
    ids = ledger.add(new)
    du, di = revoked_before(run_dir, ledger, dm.n_users, dm.n_items)
    write_requests_csv(device_record(run_dir), _as_requests(du, di))
    span = f"ids {min(ids)}..{max(ids)}" if ids else "none"
    log.info(
        "unsharing: %d new request(s) (%s); %d open in the ledger", len(new), span, len(ledger.requests())
    )

    learned = copy.deepcopy(model)  # before deletion: the methods' common starting point
    users, items = apply_deletions(model, ledger)
    if on_deleted is not None:
        on_deleted(users, items)
    # pairs the learned model still holds (a resumed, scrubbed base holds none of the old ones)
    held = learned.server.graph.has_edges(users, items)
    users, items = users[held], items[held]
    if users.numel() == 0:
        log.info("unlearning: nothing to unlearn (no revoked pair is in the learned model)")
        return {}

    metrics = {f"learn/{key}": v for key, v in judge_fn(learned, dm, users, items, k).items()}
    metrics["unlearn/requests"] = float(len(ledger.requests()))
    metrics["unlearn/revoked_pairs"] = float(users.numel())
    metrics["unlearn/revoking_users"] = float(torch.unique(users).numel())
    snapshots = SnapshotStore(snapshot_dir(run_dir)) if snapshot_dir(run_dir).exists() else None
    rounds = selected_round(run_dir, int(cfg.fed.rounds))  # the learned model's round (eval.monitor)
    first = None
    for name in methods:
        store = store_dir(run_dir, name)
        ctx = UnlearnContext(
            learned=learned,
            dm=dm,
            users=users,
            items=items,
            rounds=rounds,
            options=dict(OmegaConf.to_container(ucfg[name], resolve=True)) if name in ucfg else {},
            store=store,
            build=build,
            snapshots=snapshots if METHODS[name].uses_snapshots else None,
        )
        log.info("unlearning with %s ...", name)
        unlearned, seconds = run_method(name, ctx)
        leftover = unlearned.server.graph.has_edges(users, items)
        if leftover.any():
            raise RuntimeError(f"{name}: {int(leftover.sum())} revoked pairs are still in the server graph")
        judged = judge_fn(unlearned, dm, users, items, k)
        metrics.update({f"unlearn/{name}/{key}": v for key, v in judged.items()})
        metrics[f"unlearn/{name}/time_s"] = seconds
        if getattr(unlearned, "selected_round", None) is not None:  # a method that trains selects
            metrics[f"unlearn/{name}/best_round"] = float(unlearned.selected_round)
        metrics[f"unlearn/{name}/storage_bytes"] = float(folder_bytes(store))
        first = first or unlearned
    if first is not None:
        scrub(run_dir, first, ledger, users, items)
    return metrics


def scrub(
    run_dir: Path, unlearned, ledger: RequestLedger, revoked_u: torch.Tensor, revoked_i: torch.Tensor
) -> None:
    """Rewrites the server's files without the revoked pairs (module docstring)."""
    for name in ("last.ckpt", "best.ckpt"):  # the last round's model and the selected one
        ckpt_path = run_dir / "checkpoints" / name
        if not ckpt_path.exists():
            continue
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        ckpt["state_dict"] = {k: v.cpu() for k, v in unlearned.state_dict().items()}
        ckpt["server_graph"] = {k: v.cpu() for k, v in unlearned.server.graph.state().items()}
        ckpt["unlearned"] = True
        replace_file(ckpt_path, lambda tmp, ckpt=ckpt: torch.save(ckpt, tmp))
    for name in ("server.ckpt", "server-best.ckpt"):  # a Flower run's server state: last, selected
        server_path = run_dir / "checkpoints" / name
        if not server_path.exists():
            continue
        state = torch.load(server_path, map_location="cpu", weights_only=False)
        state["server"] = {k: v.detach().cpu() for k, v in unlearned.server.state_dict().items()}
        state["server_graph"] = {k: v.cpu() for k, v in unlearned.server.graph.state().items()}
        state["unlearned"] = True
        replace_file(server_path, lambda tmp, state=state: torch.save(state, tmp))
    eraser = store_dir(run_dir, "fedEraser")
    if eraser.exists():  # its server-side store holds each client's touched item rows
        history = HistoryStore(eraser)
        n_items = unlearned.server.graph.n_items
        gone_keys = torch.unique(revoked_u * n_items + revoked_i)

        def drop_rows(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            up = ClientUpdates.from_tensors(tensors)
            keep = ~torch.isin(up.keys(n_items), gone_keys)
            counts = torch.bincount(up.owner[keep], minlength=up.users.numel())
            indptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            return {**tensors, "indptr": indptr, "items": up.items[keep], "deltas": up.deltas[keep]}

        for r in history.rounds():
            history.rewrite(r, drop_rows)
    ledger.compact()
