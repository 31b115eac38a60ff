"""``retrain``: train from scratch with the revoked pairs local (the gold standard)."""

from __future__ import annotations

from fedshare.unlearning.context import UnlearnContext


def retrain(ctx: UnlearnContext):
    model = ctx.build(ctx.dm.revoked(ctx.users.numpy(), ctx.items.numpy()))
    optimizer = model.configure_optimizers()
    for r in range(1, ctx.rounds + 1):
        model.run_round(r, optimizer)
    return model
