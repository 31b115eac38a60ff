"""Flower's ServerApp and ClientApp for FedShare (Flower 1.42 Message API, deployment engine).

The ServerApp reads the run's ``config.yaml`` from the run folder named in the run config
(``run-dir``), sets the nodes up (each answers with its shard), then drives the rounds with
`FedShareStrategy` and writes the run folder as ``python -m fedshare.train`` does:
``metrics.json``, ``history.json``, snapshots, and ``checkpoints/server.ckpt`` (the server's
state; the launcher joins it with the nodes' rows into ``checkpoints/last.ckpt``).

One message per node per round: a SuperNode starts a ClientApp process for each message (its
start and imports cost seconds) and, idle, looks for the next one every 3 s. So a validation
does not get messages of its own: it is configured when it is due (after the round's graph
step, as in-process) and rides on the next message each node gets, the next round's training
(the node scores it before it trains) or, after the last round, the test, which also ends the
node's part (it writes its clients' rows). The numbers are the in-process run's.

A node that fails or misses a round's deadline (``flower.round_timeout``) is logged and left
out from then on: its users are skipped, the run goes on with the other nodes, and
``metrics.json`` says which shards were lost and when (``flower/lost_shard/<k>``: the round).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedshare.atomic import replace_file, write_json
from fedshare.config import compose_saved
from fedshare.flower.node import Node
from fedshare.flower.strategy import FedShareStrategy, check_reply, setup_content

log = logging.getLogger("fedshare.flower")

# the server's state at the end: the last round's, and the selected round's (eval.monitor); the
# launcher joins each with the nodes' rows into last.ckpt and best.ckpt
LAST_SERVER, BEST_SERVER = "server.ckpt", "server-best.ckpt"
KIND_TYPE = {
    "setup": "query",
    "train": "train",
    "evaluate": "evaluate",
    "unshare": "query",
}


class FlowerRunError(RuntimeError):
    """The federation cannot go on (too few nodes, a node with the wrong shard, ...)."""


def _say(text: str) -> None:
    print(text, flush=True)  # the ServerApp's stdout is what `flwr run --stream` shows


# ---- the ServerApp ---------------------------------------------------------------------------------
def exchange(
    grid: Any, kind: str, contents: dict[int, RecordDict], node_of: dict[int, int], timeout: float, group: str
) -> tuple[dict[int, RecordDict], dict[int, str]]:
    """Sends ``contents[shard]`` to the shard's node; returns the replies and the failures.

    Replies are pulled every 50 ms (``Grid.send_and_receive`` sleeps 3 s between pulls)."""
    shard_of_node = {n: k for k, n in node_of.items()}
    messages = [
        Message(content, node_of[k], KIND_TYPE[kind], group_id=group) for k, content in contents.items()
    ]
    waiting = set(grid.push_messages(messages))
    replies, failed = {}, {}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for reply in grid.pull_messages(waiting):
            waiting.discard(reply.metadata.reply_to_message_id)
            k = shard_of_node.get(reply.metadata.src_node_id)
            if k is None:
                continue
            if reply.has_error():
                failed[k] = f"error {reply.error.code}: {reply.error.reason}"
            else:
                replies[k] = reply.content
        if waiting:
            time.sleep(0.05)
    for k in contents:
        if k not in replies and k not in failed:
            failed[k] = f"no reply within flower.round_timeout={timeout:g} s"
    return replies, failed


def wait_for_nodes(grid: Any, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n:
            return ids
        if time.monotonic() > deadline:
            raise FlowerRunError(
                f"only {len(ids)} of fed.nodes={n} SuperNodes connected within flower.start_timeout={timeout:g} s"
            )
        time.sleep(0.2)


def serve(grid: Any, cfg: Any, run_dir: Path) -> dict[str, float]:
    """The whole run on ``grid``; returns (and writes) the run's metrics."""
    # the server's side (Lightning, DGL): a ClientApp process, which imports this module too, never loads it
    from fedshare.config import to_yaml
    from fedshare.eval.selection import Selection
    from fedshare.run import driver
    from fedshare.run.build import new_model

    n = int(cfg.fed.nodes)
    rounds = int(cfg.fed.rounds)
    timeout = float(cfg.flower.round_timeout)
    node_ids = wait_for_nodes(grid, n, float(cfg.flower.start_timeout))
    setup = {i: setup_content(to_yaml(cfg)) for i in range(len(node_ids))}
    replies, failed = exchange(grid, "setup", setup, dict(enumerate(node_ids)), timeout, "setup")
    if failed:
        raise FlowerRunError(
            "setup failed on " + "; ".join(f"node {node_ids[i]}: {why}" for i, why in failed.items())
        )
    node_of: dict[int, int] = {}
    by_shard: dict[int, RecordDict] = {}
    for i, content in replies.items():
        shard = int(content["info"]["shard"])
        if shard in node_of:
            raise FlowerRunError(
                f"two SuperNodes host shard {shard}: give each its own 'shard' in --node-config"
            )
        node_of[shard], by_shard[shard] = node_ids[i], content
    missing = sorted(set(range(n)) - set(node_of))
    if missing:
        raise FlowerRunError(f"no SuperNode hosts shard(s) {missing} of fed.nodes={n}")

    # the module is built from what the nodes report (the server never reads the dataset)
    info = dict(by_shard[0]["info"])
    module = new_model(cfg, int(info["n_users"]), int(info["n_items"]))
    strategy = FedShareStrategy(cfg, module)
    strategy.absorb_setup(by_shard)  # every node read the same data; the shares of round 1
    _say(f"[fedshare] {n} nodes set up: {info['n_users']} users x {info['n_items']} items; {rounds} rounds")

    recorders = driver.recorders(cfg, run_dir)  # the launcher admits only methods that run on Flower
    for rec in recorders:
        rec.start(module, 0)
    val_split = str(info["val_split"])
    every = max(1, int(cfg.eval.every))
    validate = driver.validates(cfg, bool(info["has_valid"]), val_split)
    selection = Selection.for_run(cfg, validate, val_split)
    history: list[dict[str, float]] = []
    live = list(range(n))
    lost: dict[int, int] = {}  # shard -> the round it was lost (fed.rounds + 1: after training)
    round_s: list[float] = []
    (run_dir / "flower").mkdir(exist_ok=True)

    def run(kind: str, contents: dict[int, RecordDict], group: str) -> dict[int, RecordDict]:
        replies, failed = exchange(grid, kind, contents, node_of, timeout, group)
        for k, why in sorted(failed.items()):
            log.warning(
                "shard %d (node %d) failed in %s %s: %s; its users are skipped from now on",
                k,
                node_of[k],
                kind,
                group,
                why,
            )
            _say(f"[fedshare] shard {k} lost in {kind} {group}: {why}; its users are skipped from now on")
            live.remove(k)
            lost[k] = int(group) if group.isdigit() else rounds + 1
        if not live:
            raise FlowerRunError(f"every node was lost (in {kind} {group})")
        return replies

    prefix = driver.history_prefix(val_split)
    val_key = f"{prefix}/recall@{max(module.ks)}"
    # a validation waits for the next message: (its round, its messages), and the checkpoint of
    # that round (a copy: the next round moves the tables in place), written once it is known
    pending: tuple[int, dict[int, RecordDict]] | None = None
    pending_state: dict[str, Any] | None = None
    # model selection: the server's state at the pending validation's round, and at the best one
    validated_state: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None

    def validated(replies: dict[int, RecordDict], record: str = "validation") -> None:
        nonlocal pending, pending_state, validated_state, best_state
        round_, _ = pending
        values = {f"{prefix}/{k}": v for k, v in strategy.aggregate_metric(replies, record).items()}
        history.append({"round": round_, **values})
        driver.write_history(run_dir, history)
        value = values.get(val_key, float("nan"))
        _say(f"[fedshare] round {round_}/{rounds} validated: {val_key} {value:.4f}")
        if selection.update(history[-1]):
            best_state = validated_state
        if pending_state is not None:
            write_server(run_dir, pending_state, history)
        pending, pending_state, validated_state = None, None, None

    def selecting(contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """The best round so far goes with every message: the nodes keep its rows."""
        if selection.best_round is not None:
            for content in contents.values():
                content["config"]["best_round"] = selection.best_round
        return contents

    rounds_done = trained = 0  # trained: after an early stop, one more than counted (see below)

    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        for rec in recorders:
            rec.before_round(r, module)
        contents = selecting(strategy.configure_fit(r, list(live)))
        if pending:
            contents = strategy.with_validation(contents, pending[1], pending[0] if selection.active else None)
        replies = run("train", contents, str(r))
        logs = strategy.aggregate_fit(replies)
        rounds_done = trained = r
        if pending:
            validated(replies)
        if selection.should_stop:  # known one round later than in-process: this round is not counted
            rounds_done = r - 1
            _say(f"[fedshare] early stop after round {rounds_done}: no new best {selection.monitor} in {selection.patience} validations")
            break
        for rec in recorders:
            rec.after_round(r, module)
        seconds = time.perf_counter() - t0
        _say(f"[fedshare] round {r}/{rounds}: loss {logs['train/loss']:.4f}, {seconds:.2f} s")
        if validate and r % every == 0:  # configured now, as the in-process run validates now
            split = "curve" if val_split == "test" else "valid"  # the nodes' name of the split
            pending = (r, strategy.configure_evaluate(split, list(live)))
            if selection.active:
                validated_state = copy.deepcopy(server_state(strategy, r))
        if r % int(cfg.checkpoint.every) == 0 and r < rounds:  # the last round's: after the test, below
            state = server_state(strategy, r)
            if pending:
                pending_state = copy.deepcopy(state)
            else:
                write_server(run_dir, state, history)
        round_s.append(time.perf_counter() - t0)  # the whole round as the server waits for it
        write_json(run_dir / "flower" / "rounds.json", {"round_s": round_s})
    for rec in recorders:
        rec.close(module)
    if pending and selection.active:  # the test needs the selection: the last validation first
        contents = selecting(pending[1])
        for content in contents.values():
            content["config"]["val_round"] = pending[0]
        validated(run("evaluate", contents, "validate"), record="metric")
    use_best = selection.active and selection.best_round != rounds_done
    if use_best:  # the last round's state stays the checkpoint's; the test is the selected round's
        write_server(run_dir, server_state(strategy, trained), history)
        load_server_state(strategy, best_state)
    contents = selecting(strategy.configure_evaluate("test", list(live), finish=True))
    for content in contents.values():
        if use_best:
            content["config"]["use_best"] = True
    if pending:
        contents = strategy.with_validation(contents, pending[1])
    replies = run("evaluate", contents, "test")
    test = {f"test/{k}": v for k, v in strategy.aggregate_evaluate(replies).items()}
    if pending:
        validated(replies)
    lost_at = {f"flower/lost_shard/{k}": float(r) for k, r in lost.items()}
    extra = {**lost_at, **selection.metrics(rounds_done)}
    metrics = driver.run_metrics(test, rounds_done, history, extra)  # what the in-process run's holds
    driver.write_metrics(run_dir, metrics)
    if not use_best:  # the last round is the selected one: one state, both files
        best_state = server_state(strategy, trained)
        write_server(run_dir, best_state, history)
    if selection.active:  # the selected round's state, as in-process runs keep it in best.ckpt
        write_server(run_dir, best_state, history, BEST_SERVER)
    metrics.update(unlearn_on_nodes(cfg, strategy, run_dir, run, live))
    return metrics


def unlearn_on_nodes(cfg: Any, strategy: FedShareStrategy, run_dir: Path, run, live) -> dict:
    """The unlearning phase of `fedshare.unlearn` with the clients on the nodes: the server
    deletes the pairs from its stores and runs the method on its own tables; the nodes move
    the pairs to their local data and judge every model (ranking needs the clients' rows)."""
    # the server's side (Lightning, torchmetrics), as in serve()
    from fedshare.run import driver
    from fedshare.unlearning.judge import auc, forget_hits

    module = strategy.module
    graph = module.server.graph
    data = SimpleNamespace(n_users=graph.n_users, n_items=graph.n_items)

    def notify(users: torch.Tensor, items: torch.Tensor) -> None:
        replies = run("unshare", strategy.configure_unshare(users, items, list(live)), "unshare")
        for content in replies.values():
            check_reply("unshare", content)

    def judge(model: Any, _data: Any, users: torch.Tensor, items: torch.Tensor, k: int) -> dict[str, float]:
        revoking = torch.unique(users)
        replies = run("evaluate", strategy.configure_judge(model.server, revoking, list(live)), "judge")
        everyone, revoked, other = strategy.aggregate_judge(replies)
        out = {
            f"test/{key}": v for key, v in everyone.items() if key.endswith(f"@{k}") and "/share=" not in key
        }
        out.update(
            {
                f"revoking/{key}": v
                for key, v in revoked.items()
                if key.endswith(f"@{k}") and "/share=" not in key
            }
        )
        out[f"forget/hit@{k}"] = forget_hits(model, users, items, k)
        server = model.server
        member = (server.user_view[users] * server.item_view[items]).sum(-1)
        out["mia/auc"] = auc(member, other)
        return out

    if driver.methods(cfg):
        _say(f"[fedshare] unlearning on the server with {', '.join(driver.methods(cfg))}; judged on the nodes")
    return driver.unlearn(cfg, module, data, run_dir, None, judge_fn=judge, on_deleted=notify)


def server_state(strategy: FedShareStrategy, round_: int) -> dict[str, Any]:
    """The server's whole state after ``round_`` (no client rows); its tensors are the live ones."""
    module = strategy.module
    server = module.server
    return {
        "round": round_,
        "server": {k: v.detach().cpu() for k, v in server.state_dict().items()},
        "optimizer": strategy.optimizer.state_dict(),
        "generators": server.generator_states(),
        "server_graph": {k: v.cpu() for k, v in server.graph.state().items()},
        "hyper_parameters": dict(module.hparams),
    }


def load_server_state(strategy: FedShareStrategy, state: dict[str, Any]) -> None:
    """The server back at ``state`` (`server_state` of an earlier round): the selected model."""
    server = strategy.module.server
    server.load_state_dict(state["server"])
    server.load_graph_state(state["server_graph"])
    server.load_generator_states(state["generators"])
    strategy.optimizer.load_state_dict(state["optimizer"])


def write_server(run_dir: Path, state: dict[str, Any], history: list, name: str = LAST_SERVER) -> None:
    """``checkpoints/<name>``: ``state`` (`server_state`) with the validations so far."""
    path = run_dir / "checkpoints" / name
    replace_file(path, lambda tmp: torch.save({**state, "history": {"val": history}}, tmp))


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call otherwise
    run_dir = Path(str(context.run_config["run-dir"]))
    cfg = compose_saved(run_dir / "config.yaml")
    serve(grid, cfg, run_dir)


# ---- the ClientApp ---------------------------------------------------------------------------------
client_app = ClientApp()


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    action = str(msg.content["config"]["action"])
    if action == "setup":
        yaml = str(msg.content["config"]["yaml"])
        node = Node.from_context(context, yaml)
        node.save(context)
        return Message(node.setup(), reply_to=msg)
    if action == "unshare":
        node = Node.from_context(context)
        return Message(node.unshare(context, msg.content), reply_to=msg)
    raise ValueError(f"unknown query action {action!r}")


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    node.check(msg.content)  # what a device may receive (check_delivery)
    reply = node.train(msg.content)
    node.save(context)
    return Message(reply, reply_to=msg)


@client_app.evaluate()
def client_evaluate(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    out = context.node_config.get("out-dir")
    node.check(msg.content)
    reply = node.evaluate(msg.content, str(out) if out else None)
    node.save(context)  # the rows kept for model selection (and, after the test, the selected ones)
    return Message(reply, reply_to=msg)
