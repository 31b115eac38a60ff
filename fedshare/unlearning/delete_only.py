"""``delete_only``: delete the revoked edges from every server store, no correction."""

from __future__ import annotations

from fedshare.unlearning.context import UnlearnContext, deleted_copy


def delete_only(ctx: UnlearnContext):
    return deleted_copy(ctx)
