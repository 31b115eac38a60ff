"""``finetune``: delete the revoked edges, then keep training for ``unlearn.finetune.rounds`` rounds."""

from __future__ import annotations

from fedshare.unlearning.context import UnlearnContext, deleted_copy


def finetune(ctx: UnlearnContext):
    model = deleted_copy(ctx)
    optimizer = model.configure_optimizers()
    for r in range(ctx.rounds + 1, ctx.rounds + 1 + int(ctx.options["rounds"])):
        model.run_round(r, optimizer)
    return model
