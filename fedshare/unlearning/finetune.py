"""``finetune``: delete the revoked edges, then keep training for ``unlearn.finetune.rounds``
rounds, selecting on validation among the deleted copy and its fine-tuned rounds (`train_selected`)."""

from __future__ import annotations

from fedshare.unlearning.context import UnlearnContext, deleted_copy, train_selected


def finetune(ctx: UnlearnContext):
    first = ctx.rounds + 1
    return train_selected(ctx, deleted_copy(ctx), first, first + int(ctx.options["rounds"]) - 1, True)
