"""The client side on Flower: one SuperNode hosts the clients of one shard.

A SuperNode's node config says which shard it hosts (``shard=k num-shards=N``; user ``u`` is on
shard ``u % N``, as ``fed.nodes=N`` splits them in-process). The node reads the dataset, keeps
only its own users' rows of every split (`node_data`: the rest is dropped before anything is
trained or sent) and runs its clients with the very same client code as the in-process round
(`FedShareClients.fit_sums`: every client of the node's cohort at once, with the node's own
stream of draws).

Flower starts a fresh ClientApp process for every message, so what must outlive a message (the
clients' private rows ``P[u]`` and the node's generator state) is kept in the SuperNode's
``context.state``, on the node; it never goes to the server. At the end, with ``out-dir`` in
its node config, the node writes its clients' rows there (the launcher joins them into the
run's checkpoint).

A process costs seconds (its start, its imports, a SuperNode's idle poll), so one message does
all a node has to do at that point of the run: a training message also asks for the validation
of the previous round (scored before training, with the model the server had after that round's
graph step), and the test message for the last round's validation and the rows' writing.

Model selection (`fedshare.eval.selection`): the server learns a validation's numbers one
message later, so a node keeps the rows of the last validated round (``val_round`` in the
message that asked for it) and, when a later message's ``best_round`` names that round, keeps
them as the best. The test message says ``use_best`` when the selected round is not the last:
the node tests (and from then on judges) with the best round's rows; the rows it writes for the
run's checkpoint stay the last round's, as in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from fedshare.atomic import replace_file
from fedshare.data.interactions import UserCSR
from fedshare.eval.ranking import RankingSums, update_ranking
from fedshare.federated.fedmf import shard_of
from fedshare.flower.payload import from_record, to_record, upload_record, views_from

STATE = "fedshare.state"  # context.state records
CONFIG = "fedshare.config"
UNSHARED = "fedshare.unshared"
VALIDATED = "fedshare.validated"  # the rows of the last validated round (a candidate for the best)
BEST = "fedshare.best"  # the rows of the best validated round so far (eval.monitor)
# the rows a node writes at the end: the last round's, and the tested round's (the selected one)
LAST_ROWS, BEST_ROWS = "clients", "clients-best"


# the id-bearing tensors a node may receive (record -> keys): every id must be one of its own users
DELIVERY_IDS = {
    "views": ("view_users",),
    "val_views": ("view_users",),
    "model": ("cohort",),
    "judge": ("revoking",),
}
# what a views record may hold: its users' ids and views, the centroid negatives, the item views
VIEW_KEYS = frozenset({"view_users", "user_views", "pool", "item_views"})


class DeliveryError(RuntimeError):
    """The server sent a node another user's id or view (what a device may receive: its own
    data's results and what every device receives, the item table and the item views)."""


def check_delivery(content: RecordDict, shard: int, nodes: int) -> None:
    """The mirror of `fedshare.flower.strategy.check_reply` on the device side: no id of
    another shard's user, no views record with anything but its users' views, the centroid
    negatives (means with no id) and the item views, and exactly one view per own user.
    Reads only the arrays it checks (no copy of the item table or the views)."""
    for name, keys in DELIVERY_IDS.items():
        if name not in content:
            continue
        record = content[name]
        if name in ("views", "val_views"):
            extra = sorted(set(record.keys()) - VIEW_KEYS)
            if extra:
                raise DeliveryError(
                    f"shard {shard} received {name} with {', '.join(extra)}; a device receives only "
                    f"{', '.join(sorted(VIEW_KEYS))} (no other user's id or view)"
                )
            if "view_users" in record:
                n_views, n_users = record["user_views"].shape[0], record["view_users"].shape[0]
                if n_views != n_users:
                    raise DeliveryError(
                        f"shard {shard} received {n_views} user views in {name} for {n_users} of its "
                        "users: a view without its own user's id"
                    )
        for key in keys:
            if key not in record:
                continue
            ids = torch.from_numpy(record[key].numpy()).long()
            if ids.numel() and bool((shard_of(ids, nodes) != shard).any()):
                raise DeliveryError(f"shard {shard} received ids of another shard's users in {name}.{key}")


class NodeConfigError(ValueError):
    """A SuperNode's node config does not fit the run."""


@dataclass(frozen=True)
class NodeData:
    """What one node hosts: its users' rows of every split (other users' rows are empty),
    with the attributes a module's ``attach_data`` reads from a data module."""

    n_users: int
    n_items: int
    train: UserCSR
    valid: UserCSR
    test: UserCSR
    shared: UserCSR
    share_start: np.ndarray
    share_group: np.ndarray
    group_names: list[str]
    val_split: str


def node_data(parts: Any, shard: int, nodes: int, val_split: str = "valid") -> NodeData:
    """The shard's rows of a `fedshare.data.sharing.Partition` (or a data module): nothing else is kept."""

    def mine(csr: UserCSR) -> UserCSR:
        return csr.select(csr.users % nodes == shard)

    n_users, n_items = parts.train.n_users, parts.train.n_items
    own = np.arange(n_users) % nodes == shard
    return NodeData(
        n_users,
        n_items,
        mine(parts.train),
        mine(parts.valid),
        mine(parts.test),
        mine(parts.shared),
        np.where(own, parts.share_start, -1),
        parts.share_group,
        list(parts.group_names),
        val_split,
    )


def shard_from(node_config: dict[str, Any], cfg: DictConfig) -> int:
    """The node's shard, checked against the run's ``fed.nodes``."""
    try:
        shard, n = int(node_config["shard"]), int(node_config["num-shards"])
    except (KeyError, TypeError, ValueError) as err:
        raise NodeConfigError(
            f"the SuperNode's node config must hold integers 'shard' and 'num-shards' "
            f"(--node-config 'shard=0 num-shards={cfg.fed.nodes}'), got {dict(node_config)}"
        ) from err
    if n != int(cfg.fed.nodes) or not 0 <= shard < n:
        raise NodeConfigError(
            f"the SuperNode hosts shard={shard} of num-shards={n}, but the run has fed.nodes={cfg.fed.nodes}: "
            f"start one SuperNode per shard 0..{int(cfg.fed.nodes) - 1} with num-shards={cfg.fed.nodes}"
        )
    return shard


class Node:
    """The clients of one shard, rebuilt for each message from the config and ``context.state``."""

    def __init__(self, cfg: DictConfig, shard: int) -> None:
        # only what a device needs: no Lightning, no server graph (a ClientApp process starts
        # for every message, so its imports are paid every round)
        from fedshare.data.datasets import locate_files
        from fedshare.data.sharing import partition
        from fedshare.federated.fedshare import make_clients
        from fedshare.seeding import torch_generator

        self.cfg, self.shard, self.nodes = cfg, shard, int(cfg.fed.nodes)
        if cfg.data.format != "synthetic":
            locate_files(cfg.data, download=True)
        parts = partition(cfg)
        curve = not parts.valid.items.size and cfg.eval.curve  # as the data module's val_split
        self.data = node_data(parts, shard, self.nodes, "test" if curve else "valid")
        del parts  # the other shards' rows go now
        model = OmegaConf.to_container(cfg.model, resolve=True)
        self.clients = make_clients(
            self.data.n_users, torch_generator(cfg.seed, "init"), int(cfg.seed), self.nodes, **model
        )
        self.clients.attach_data(self.data.train, self.data.shared, self.data.share_start)
        self.csr = {
            name: (
                torch.from_numpy(getattr(self.data, name).indptr),
                torch.from_numpy(getattr(self.data, name).items),
            )
            for name in ("train", "valid", "test")
        }
        self.share_group = torch.from_numpy(self.data.share_group)
        self.ks, self.beta = [int(k) for k in cfg.eval.ks], float(model["beta"])
        self.users = torch.nonzero(shard_of(torch.arange(self.data.n_users), self.nodes) == shard).squeeze(1)
        self.gen = self.clients.round_gens[shard]
        self.kept: dict[str, dict[str, torch.Tensor]] = {}  # VALIDATED / BEST: {"user_rows", "round"}

    @staticmethod
    def from_context(context: Any, yaml: str | None = None) -> Node:
        if yaml is None:
            if CONFIG not in context.state:
                raise NodeConfigError("this node was never set up for the run (no setup message reached it)")
            yaml = str(context.state[CONFIG]["yaml"])
        cfg = OmegaConf.create(yaml)
        root = context.node_config.get("data-root")
        if root:  # each host reads its own copy of the data
            cfg = OmegaConf.merge(cfg, {"data": {"root": str(root)}})
        node = Node(cfg, shard_from(context.node_config, cfg))
        if STATE in context.state:
            node.restore(context.state[STATE])
        node.kept = {name: from_record(context.state[name]) for name in (VALIDATED, BEST) if name in context.state}
        if UNSHARED in context.state:
            t = from_record(context.state[UNSHARED])
            node.clients.unshare(t["users"].long(), t["items"].long())
        context.state[CONFIG] = ConfigRecord({"yaml": yaml})
        return node

    # ---- state kept on the node between messages ---------------------------------------------------
    def restore(self, record: ArrayRecord) -> None:
        t = from_record(record)
        self.clients.user_emb[self.users] = t["user_rows"].to(self.clients.user_emb.dtype)
        self.gen.set_state(t["round_gen"])

    def save(self, context: Any) -> None:
        context.state[STATE] = to_record(
            user_rows=self.clients.user_emb[self.users], round_gen=self.gen.get_state()
        )
        for name, kept in self.kept.items():
            context.state[name] = to_record(**kept)

    # ---- model selection ------------------------------------------------------------------------------
    def _select(self, config: Any) -> None:
        """``best_round`` (the server's best validated round so far): keep the validated rows
        of that round as the best."""
        if "best_round" not in config or VALIDATED not in self.kept:
            return
        validated = self.kept[VALIDATED]
        if int(validated["round"]) == int(config["best_round"]):
            self.kept[BEST] = validated

    def _keep_validated(self, config: Any, rows: torch.Tensor) -> None:
        if "val_round" in config:
            self.kept[VALIDATED] = {"user_rows": rows.clone(), "round": torch.tensor(int(config["val_round"]))}

    def _use_best(self, config: Any) -> None:
        """The test of the selected round: the best rows replace the node's rows from now on."""
        best = self.kept.get(BEST)
        want = int(config["best_round"])
        if best is None or int(best["round"]) != want:
            held = None if best is None else int(best["round"])
            raise NodeConfigError(f"the server selected round {want}, but this node kept the rows of round {held}")
        self.clients.user_emb[self.users] = best["user_rows"].to(self.clients.user_emb.dtype)

    # ---- messages ------------------------------------------------------------------------------------
    def _shares(self, round_: int) -> ArrayRecord:
        """``S_u`` of the node's users who start sharing at ``round_`` (sent the round before)."""
        users, items = self.clients.shares_starting(round_)
        if round_ > int(self.cfg.fed.rounds):  # the run ends first: nothing is sent
            users, items = users[:0], items[:0]
        return to_record(users=users, items=items)

    def setup(self) -> RecordDict:
        return RecordDict(
            {
                "info": ConfigRecord(
                    {
                        "n_users": self.data.n_users,
                        "n_items": self.data.n_items,
                        "group_names": list(self.data.group_names),
                        "shard": self.shard,
                        "val_split": self.data.val_split,
                        "has_valid": bool(self.data.valid.items.size),
                    }
                ),
                "shares": self._shares(1),
            }
        )

    def check(self, content: RecordDict) -> None:
        check_delivery(content, self.shard, self.nodes)

    def train(self, content: RecordDict) -> RecordDict:
        """The node's cohort clients' local epochs; with ``validate`` in the config, first the
        validation the server asked for (``val_model``, ``val_views``: the model after the last
        round), on the rows as they are before this round trains them."""
        round_ = int(content["config"]["round"])
        self._select(content["config"])
        validation = None
        if "validate" in content["config"]:
            validation = self.ranked(
                str(content["config"]["validate"]), content["val_model"], content.get("val_views")
            )
            self._keep_validated(content["config"], self.clients.user_emb[self.users])
        t = from_record(content["model"])
        views = views_from(from_record(content["views"])) if "views" in content else None
        cohort = t["cohort"].long()
        if cohort.numel() and bool((shard_of(cohort, self.nodes) != self.shard).any()):
            raise NodeConfigError(
                f"round {round_}: the server sent clients of another shard to shard {self.shard}"
            )
        upload, sums = self.clients.fit_sums(cohort, t["q"], views)
        out = RecordDict(
            {
                "upload": upload_record(upload),
                "losses": ConfigRecord({k: float(v) if "sum" in k else int(v) for k, v in sums.items()}),
                "shares": self._shares(round_ + 1),
            }
        )
        if validation is not None:
            out["validation"] = validation
        return out

    @torch.no_grad()
    def ranked(
        self, split: str, model: ArrayRecord, views: ArrayRecord | None, users: torch.Tensor | None = None
    ) -> ArrayRecord:
        """Ranking sums and counts of ``users`` (default: the node's own) on ``split``: ``valid``
        (masks train), ``test`` (masks train and valid) or ``curve`` (test, masked as test)."""
        target, history = {"valid": ("valid", ("train",)), "test": ("test", ("train", "valid"))}.get(
            split, ("test", ("train", "valid"))
        )
        q = from_record(model)["q"]
        views = views_from(from_record(views)) if views is not None else None
        csr = self.csr
        users = self.users if users is None else users
        metric = RankingSums(self.ks, len(self.data.group_names))
        users = users[csr[target][0].diff().index_select(0, users) > 0]
        size = int(self.cfg.eval.batch_users)
        for lo in range(0, users.numel(), size):
            batch = users[lo : lo + size]
            scores = self.clients.score(batch, q, views, self.beta).float()
            update_ranking(
                metric, scores, batch, [csr[n] for n in history], csr[target], self.share_group[batch]
            )
        return to_record(sums=metric.sums, counts=metric.counts)

    @torch.no_grad()
    def evaluate(self, content: RecordDict, out_dir: str | None = None) -> RecordDict:
        """Ranking metrics (sums and counts) of the node's users; with ``validate`` in the config
        also the validation of the last round (``val_model``, ``val_views``); with a ``judge``
        record also of its revoking users, and the server-side scores of their held-out pairs
        (the membership attack of `fedshare.unlearning.judge.mia_auc`, whose other half the
        server computes); with ``finish`` the node also writes its clients' rows (`finish`)."""
        config = content["config"]
        split = str(config["split"])
        model, views = content["model"], content.get("views")
        self._select(config)
        written = self.finish(out_dir)["info"] if config.get("finish") else None  # the last round's rows
        if config.get("use_best"):
            self._use_best(config)
        if config.get("finish"):  # the tested (selected) round's rows: the launcher's best.ckpt
            self.finish(out_dir, BEST_ROWS)
        out = RecordDict({"metric": self.ranked(split, model, views)})
        self._keep_validated(config, self.clients.user_emb[self.users])  # a validation of its own
        if "validate" in config:
            out["validation"] = self.ranked(
                str(config["validate"]), content["val_model"], content.get("val_views")
            )
        if "judge" in content:
            j = from_record(content["judge"])
            revoking = j["revoking"].long()
            out["revoking"] = self.ranked(split, model, views, revoking)
            indptr, items = self.csr["test"]
            counts = indptr.index_select(0, revoking + 1) - indptr.index_select(0, revoking)
            rows = torch.repeat_interleave(torch.arange(revoking.numel()), counts)
            parts = [items[indptr[u] : indptr[u + 1]] for u in revoking.tolist()]
            t_items = torch.cat(parts) if parts else items[:0]
            scores = (
                j["mia_user_views"].index_select(0, rows) * j["item_view"].index_select(0, t_items)
            ).sum(-1)
            out["mia"] = to_record(scores=scores)
        if written is not None:
            out["info"] = written
        return out

    def unshare(self, context: Any, content: RecordDict) -> RecordDict:
        """The node's users stop sharing these pairs: they stay on the device as local data
        (kept in ``context.state``, so every later message rebuilds the node without them)."""
        t = from_record(content["pairs"])
        users, items = t["users"].long(), t["items"].long()
        if users.numel() and bool((shard_of(users, self.nodes) != self.shard).any()):
            raise NodeConfigError(
                f"unshare: the server sent pairs of another shard's users to shard {self.shard}"
            )
        self.clients.unshare(users, items)
        if UNSHARED in context.state:
            old = from_record(context.state[UNSHARED])
            users, items = torch.cat([old["users"], users]), torch.cat([old["items"], items])
        context.state[UNSHARED] = to_record(users=users, items=items)
        return RecordDict({"info": ConfigRecord({"unshared": int(t["users"].numel())})})

    def finish(self, out_dir: str | None, name: str = LAST_ROWS) -> RecordDict:
        """Writes the node's clients' rows to ``out-dir`` (the node's own disk) as
        ``<name>-<shard>.safetensors``."""
        written = ""
        if out_dir:
            path = Path(out_dir) / f"{name}-{self.shard}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {
                "users": self.users.contiguous(),
                "user_emb": self.clients.user_emb[self.users].contiguous(),
                "round_gen": self.gen.get_state().contiguous(),
            }
            replace_file(path, lambda tmp: save_file(tensors, str(tmp)))
            written = str(path)
        return RecordDict({"info": ConfigRecord({"written": written})})
