"""``retrain``: train from scratch with the revoked pairs local (the gold standard), selecting
its round on validation as the learning phase does (`train_selected`)."""

from __future__ import annotations

from fedshare.unlearning.context import UnlearnContext, train_selected


def retrain(ctx: UnlearnContext):
    model = ctx.build(ctx.dm.revoked(ctx.users.numpy(), ctx.items.numpy()))
    return train_selected(ctx, model, 1, int(ctx.dm.cfg.fed.rounds))
