"""A/B of the server's graph step, in one process, alternating (2 cores, nothing else running):
A = the step through autograd (as before 2026-12-01 22:40), B = `GraphServer.graph_step` (gradients by hand).
    python docs/runs/bench-speed/ab_graph_step.py data=amazon-beauty data.root=../shared/datasets
Both start from the same state each time (a copy of the model after round 1); prints medians."""
import copy
import json
import statistics
import sys
import time

import torch

from fedshare.benchmarks.suite import _setup
from fedshare.config import compose
from fedshare.federated.losses import info_nce_in_batch
from fedshare.graph.lightgcn import EdgeSampler, bpr_loss
from fedshare.run.runtime import tune_allocator


def autograd_step(server, optimizer):
    """The graph step as it was: propagate + bpr_loss + InfoNCE through autograd."""
    sampler = EdgeSampler(server.graph)
    for _ in range(server.steps):
        users, pos, neg = sampler.sample(server.batch_size, server.step_gen)
        user_out, item_out = server.graph.propagate(server.user0, server.item0, server.layers)
        bpr, l2 = bpr_loss(user_out, item_out, server.user0, server.item0, users, pos, neg, server.reg)
        items = torch.unique(pos)
        if items.numel() > server.align_items:
            items = items[torch.randperm(items.numel(), generator=server.step_gen)[: server.align_items]]
        q_rows = server.item_emb.index_select(0, items).requires_grad_(True)
        z_rows = item_out.index_select(0, items).detach()
        loss = bpr + l2 + server.lambda_cl * info_nce_in_batch(z_rows, q_rows, server.tau).mean()
        optimizer.zero_grad(set_to_none=True)
        (q_grad,) = torch.autograd.grad(loss, q_rows, retain_graph=True)
        server.item_emb.index_add_(0, items, q_grad, alpha=-server.q_align_lr)
        loss.backward()
        optimizer.step()
    server.refresh_views()


tune_allocator()
cfg = compose(["logger=none", *sys.argv[1:]])
dm, model = _setup(cfg)
opt = model.configure_optimizers()
model.run_round(1, opt)
times = {"autograd": [], "by_hand": []}
ref, diff = None, None
for rep in range(6):
    for name in ("autograd", "by_hand"):
        m = copy.deepcopy(model)
        o = m.configure_optimizers()
        t0 = time.perf_counter()
        (autograd_step(m.server, o) if name == "autograd" else m.server.graph_step(o))
        times[name].append(time.perf_counter() - t0)
        if rep == 0 and name == "autograd":
            ref = m
        elif rep == 0:
            diff = max(
                float((getattr(m.server, k) - getattr(ref.server, k)).abs().max()) for k in ("user0", "item0", "item_emb")
            )
out = {k: statistics.median(v[1:]) for k, v in times.items()}  # the first pair is warm-up
out.update(dataset=cfg.data.name, speedup=out["autograd"] / out["by_hand"], max_abs_diff=diff,
           all={k: [round(x, 4) for x in v] for k, v in times.items()})
print(json.dumps(out))
