"""The one place that imports DGL: ``dgl = import_dgl()``.

DGL 2.1.0 does not import as is on this project's torch (2.13): ``import dgl`` imports
``dgl.graphbolt``, whose loader needs a torch-specific binary and the removed
``torchdata.datapipes``, and fails. FedShare never uses graphbolt (nor ``dgl.sparse`` and
``dgl.distributed``, which do not load either), so a stub ``dgl.graphbolt`` module is put in
``sys.modules`` before DGL is imported; DGL's ``from . import graphbolt`` then finds the stub.

The stub stays even if a working graphbolt is installed one day: nothing here uses it, and
swapping modules under an imported DGL is riskier than an unused empty module.

Everything else in the project gets DGL through :func:`import_dgl`, so that the stub is always
in place first and the backend is chosen before DGL's import-time side effects run.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types

_STUB = "dgl.graphbolt"
INSTALL_HINT = "pip install dgl==2.1.0 pandas"


def _graphbolt_stub() -> types.ModuleType:
    """An empty package: ``__path__`` makes it a package, ``__spec__`` keeps importlib happy."""
    stub = types.ModuleType(_STUB)
    stub.__path__ = []
    stub.__spec__ = importlib.machinery.ModuleSpec(_STUB, None)
    stub.__doc__ = "Empty stand-in for dgl.graphbolt, put here by fedshare.graph.dgl_compat (unused)."
    return stub


def import_dgl() -> types.ModuleType:
    """Return the ``dgl`` module, importing it with the graphbolt stub on the first call.

    ``DGLBACKEND`` defaults to ``pytorch``: without it DGL picks a backend by writing
    ``~/.dgl/config.json`` into the home folder at import time (and prints a notice).
    """
    os.environ.setdefault("DGLBACKEND", "pytorch")
    if "dgl" in sys.modules:
        return sys.modules["dgl"]
    placed = _STUB not in sys.modules
    if placed:
        sys.modules[_STUB] = _graphbolt_stub()
    try:
        dgl = importlib.import_module("dgl")
    except ModuleNotFoundError as err:
        if placed:  # leave nothing behind for a later, fixed attempt
            sys.modules.pop(_STUB, None)
        if err.name == "dgl":
            raise RuntimeError(f"DGL is not installed; install it with: {INSTALL_HINT}") from err
        raise RuntimeError(
            f"DGL is installed but cannot be imported: missing module {err.name!r}; "
            f"reinstall with: {INSTALL_HINT}"
        ) from err
    except Exception:
        if placed:
            sys.modules.pop(_STUB, None)
        raise
    return dgl
