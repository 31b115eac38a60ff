"""The server side of a FedShare round on Flower, without processes: configure -> aggregate.

`FedShareStrategy` holds the server half of a `FedShareModule` (``module.server``: ``Q``, the
shared graph, its tables and generators) and calls the very same server steps as the
in-process round (`FedShareModule.run_round`): ``receive_shares`` -> ``configure_round`` ->
``aggregate`` -> ``graph_step``. What differs is only the transport: the cohort and the views
are cut into per-node payloads (a node gets its own clients' ids and views, the round's pool
of negative views, ``Q`` and the item views), and the nodes' replies are added up in node
order, as the in-process round adds its nodes' uploads.

It never sees a client's data: a node's reply holds summed item-row changes (`Upload`, sparse),
loss sums, the shared pairs ``S_u`` of users who start sharing next round, and ranking sums.
`check_reply` refuses anything else, so a node that sent more would stop the run.

A validation rides on the next message a node gets (`with_validation`): it is configured when
the in-process run validates (after the round's graph step, before the next round's shares
enter), so it scores the same model, and the node scores it before it trains again.

Messages are keyed by *shard* (a node's ``shard`` from its node config; user ``u`` lives on
shard ``u % fed.nodes``), not by Flower node id: `fedshare.flower.apps` maps between them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig
from torch import Tensor

from fedshare.data.interactions import UserCSR
from fedshare.federated.fedmf import shard_of
from fedshare.federated.fedshare import round_logs
from fedshare.flower.payload import from_record, slice_views, to_record, upload_from, views_record

# what a node may send back, per message kind (record name -> allowed keys)
REPLY_KEYS = {
    "setup": {
        "info": {"n_users", "n_items", "group_names", "shard", "val_split", "has_valid"},
        "shares": {"users", "items"},
    },
    "train": {
        "upload": {"rows", "delta", "weight"},
        "losses": {"bpr_sum", "bpr_steps", "cl_sum", "cl_steps"},
        "shares": {"users", "items"},
        "validation": {"sums", "counts"},  # the last round's, when the message asked for it
    },
    "evaluate": {
        "metric": {"sums", "counts"},
        "validation": {"sums", "counts"},
        "revoking": {"sums", "counts"},
        "mia": {"scores"},
        "info": {"written"},  # the test message also ends the node's part: its rows written
    },
    "unshare": {"info": {"unshared"}},
}


class ReplyError(RuntimeError):
    """A node's reply holds something the protocol does not allow."""


def check_reply(kind: str, content: RecordDict) -> None:
    """The protocol boundary on the server: only the records and keys of ``REPLY_KEYS[kind]``."""
    allowed = REPLY_KEYS[kind]
    for name, record in content.items():
        if name not in allowed:
            raise ReplyError(f"a node's {kind} reply holds record {name!r}; allowed: {sorted(allowed)}")
        extra = set(record.keys()) - allowed[name]
        if extra:
            raise ReplyError(
                f"a node's {kind} reply record {name!r} holds {sorted(extra)}; allowed: {sorted(allowed[name])}"
            )


def setup_content(cfg_yaml: str) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"action": "setup", "yaml": cfg_yaml})})


class FedShareStrategy:
    """Configure/aggregate for every round of one run; ``module`` is a fresh `FedShareModule`
    (its client half is never used here: the clients' rows live on the nodes)."""

    def __init__(self, cfg: DictConfig, module: Any) -> None:
        self.cfg = cfg
        self.module = module
        self.server = module.server
        self.nodes = int(cfg.fed.nodes)
        # the module's client half holds no data here (the clients are on the nodes): empty
        # rows, so the server-side code that touches it (unsharing's bookkeeping) sees nothing
        n_users, n_items = self.server.graph.n_users, self.server.graph.n_items
        empty = UserCSR(np.zeros(n_users + 1, np.int64), np.zeros(0, np.int64), None, n_items)
        module.clients.attach_data(empty, empty, np.full(n_users, -1, np.int64))
        self.optimizer = module.configure_optimizers()  # the in-process run's optimizer
        self.pending: list[tuple[Tensor, Tensor]] = []  # shares entering at the next round
        self.metric: Any = None  # RankingMetrics over the sharing groups the nodes report (absorb_setup)
        self._round: dict[str, Any] = {}

    # ---- setup -------------------------------------------------------------------------------
    def absorb_setup(self, replies: dict[int, RecordDict]) -> None:
        """The nodes' answers to setup: what they host, and the shares of round 1."""
        infos = {}
        for shard in sorted(replies):
            check_reply("setup", replies[shard])
            infos[shard] = dict(replies[shard]["info"])
            self._stash_shares(replies[shard])
        first = infos[min(infos)]
        for shard, info in infos.items():
            for key in ("n_users", "n_items", "group_names"):
                if info[key] != first[key]:
                    raise ReplyError(
                        f"node of shard {shard} loaded other data ({key}={info[key]!r}, shard "
                        f"{min(infos)} has {first[key]!r}): every node must read the same dataset"
                    )
        from fedshare.eval.metrics import RankingMetrics  # the server's (the nodes use fedshare.eval.ranking)

        self.metric = RankingMetrics(self.module.ks, list(first["group_names"]))

    def _stash_shares(self, content: RecordDict) -> None:
        if "shares" in content:
            t = from_record(content["shares"])
            if t["users"].numel():
                self.pending.append((t["users"].long(), t["items"].long()))

    def _receive_pending(self, round_: int) -> None:
        """Shares sent during the last round enter now, sorted as the in-process round sends
        them (by user, then item), so the graph's edges are in the same order."""
        if not self.pending:
            return
        users = torch.cat([u for u, _ in self.pending])
        items = torch.cat([i for _, i in self.pending])
        order = torch.argsort(users * self.server.graph.n_items + items)
        self.pending = []
        self.server.receive_shares(users[order], items[order], round_)

    # ---- a training round ----------------------------------------------------------------------
    def configure_fit(self, round_: int, shards: list[int]) -> dict[int, RecordDict]:
        self._round = {"t0": time.perf_counter()}
        self._receive_pending(round_)
        cohort, item_table, views = self.server.configure_round()
        self._round.update(cohort=cohort, views=views, round=round_)
        of = shard_of(cohort, self.nodes)
        view_of = shard_of(views.users, self.nodes) if views is not None else None
        out = {}
        for k in shards:
            record = {"cohort": cohort[of == k], "q": item_table}
            content = RecordDict(
                {
                    "config": ConfigRecord({"action": "train", "round": round_}),
                    "model": to_record(**record),
                }
            )
            if views is not None:
                content["views"] = views_record(slice_views(views, view_of == k))
            out[k] = content
        return out

    def aggregate_fit(self, replies: dict[int, RecordDict]) -> dict[str, float]:
        """Adds up the replies (in shard order), FedAvg, the graph step; the round's logs."""
        n_items, dim = self.server.item_emb.shape
        upload, sums = None, {"bpr_sum": 0.0, "bpr_steps": 0, "cl_sum": 0.0, "cl_steps": 0}
        for k in sorted(replies):
            content = replies[k]
            check_reply("train", content)
            losses = content["losses"]
            if int(losses["bpr_steps"]):
                sent = upload_from(content["upload"], n_items, dim)
                upload = sent if upload is None else upload + sent
            for key in sums:
                sums[key] += losses[key]
            self._stash_shares(content)
        t1 = time.perf_counter()
        if upload is not None:
            self.server.aggregate(upload)
        server_losses = self.server.graph_step(self.optimizer)
        t2 = time.perf_counter()
        r = self._round
        return round_logs(self.module, sums, r["cohort"], r["views"], server_losses, t1 - r["t0"], t2 - t1)

    # ---- evaluation ------------------------------------------------------------------------------
    def configure_evaluate(
        self, split: str, shards: list[int], finish: bool = False
    ) -> dict[int, RecordDict]:
        """``split``: ``valid`` (masks train), ``test`` (masks train and valid) or ``curve``
        (test, masked as test: the learning curve of data without a validation split);
        ``finish``: the nodes also write their clients' rows (the end of learning)."""
        views = self.server.views(pool=False)
        view_of = shard_of(views.users, self.nodes) if views is not None else None
        config = {"action": "evaluate", "split": split, **({"finish": True} if finish else {})}
        out = {}
        for k in shards:
            content = RecordDict(
                {
                    "config": ConfigRecord(config),
                    "model": to_record(q=self.server.item_emb),
                }
            )
            if views is not None:
                content["views"] = views_record(slice_views(views, view_of == k, pool=False))
            out[k] = content
        return out

    def with_validation(
        self, contents: dict[int, RecordDict], validation: dict[int, RecordDict], val_round: int | None = None
    ) -> dict[int, RecordDict]:
        """``contents`` (a round's training messages, or the test's) also ask each node for the
        validation ``validation`` (`configure_evaluate`'s messages, built when it was due): its
        split, and its model and views as ``val_model`` and ``val_views``. Those tensors are the
        ones the message already holds (``Q``, the item views: nothing moved since), and Flower
        sends a message's objects by content hash, each once: they cost nothing on the wire.
        ``val_round``: the validated round, with model selection on (the nodes keep its rows)."""
        for k, content in contents.items():
            content["config"]["validate"] = str(validation[k]["config"]["split"])
            if val_round is not None:
                content["config"]["val_round"] = val_round
            content["val_model"] = validation[k]["model"]
            if "views" in validation[k]:
                content["val_views"] = validation[k]["views"]
        return contents

    def aggregate_evaluate(self, replies: dict[int, RecordDict], record: str = "metric") -> dict[str, float]:
        for k in sorted(replies):
            check_reply("evaluate", replies[k])
        return self.aggregate_metric(replies, record)

    def aggregate_metric(self, replies: dict[int, RecordDict], record: str) -> dict[str, float]:
        """The ranking metrics of every node's ``record`` (sums and counts), added in shard order."""
        self.metric.reset()
        for k in sorted(replies):
            if record not in replies[k]:
                raise ReplyError(f"the node of shard {k} was asked for {record!r} and did not send it")
            t = from_record(replies[k][record])
            self.metric.add_sums(t["sums"], t["counts"])
        values = {key: float(v) for key, v in self.metric.compute().items()}
        self.metric.reset()
        return values

    # ---- unlearning ------------------------------------------------------------------------------
    def configure_unshare(self, users: Tensor, items: Tensor, shards: list[int]) -> dict[int, RecordDict]:
        """Each node learns which of its users' shared pairs are local again."""
        of = shard_of(users, self.nodes)
        return {
            k: RecordDict(
                {
                    "config": ConfigRecord({"action": "unshare"}),
                    "pairs": to_record(users=users[of == k], items=items[of == k]),
                }
            )
            for k in shards
        }

    def configure_judge(self, server: Any, revoking: Tensor, shards: list[int]) -> dict[int, RecordDict]:
        """The judging of an (unlearned) model ``server``: test ranking of every user and of the
        revoking users, and, for the membership attack, the server's views of the revoking
        users (each node scores them against its users' held-out items)."""
        views = server.views(pool=False)
        view_of = shard_of(views.users, self.nodes) if views is not None else None
        of = shard_of(revoking, self.nodes)
        out = {}
        for k in shards:
            mine = revoking[of == k]
            content = RecordDict(
                {
                    "config": ConfigRecord({"action": "evaluate", "split": "test"}),
                    "model": to_record(q=server.item_emb),
                    "judge": to_record(
                        revoking=mine,
                        mia_user_views=server.user_view.index_select(0, mine),
                        item_view=server.item_view,
                    ),
                }
            )
            if views is not None:
                content["views"] = views_record(slice_views(views, view_of == k, pool=False))
            out[k] = content
        return out

    def aggregate_judge(
        self, replies: dict[int, RecordDict]
    ) -> tuple[dict[str, float], dict[str, float], Tensor]:
        """Test metrics of everyone, of the revoking users, and the nodes' held-out scores."""
        everyone = self.aggregate_evaluate(replies, "metric")
        revoking = self.aggregate_evaluate(replies, "revoking")
        scores = [from_record(replies[k]["mia"])["scores"] for k in sorted(replies)]
        return everyone, revoking, torch.cat(scores) if scores else torch.zeros(0)
