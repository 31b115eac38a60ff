"""The shape of the house: no import circles, imports only run downhill, lazy imports say why,
one registry of unlearning methods, and defaults only in the YAML."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedshare", "lightning_modules", "datamodules")
ENTRY_POINTS = {"fedshare.train", "fedshare.unlearn", "fedshare.bench", "fedshare.results", "fedshare.report", "fedshare.tune", "fedshare.attack"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for n in ast.walk(node) if isinstance(n, ast.ImportFrom | ast.Import)}
    return lines


def _imports(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere (inside functions too; not TYPE_CHECKING)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        out |= {r for t in targets if (r := _resolve(t)) and r != module}
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), a package's ``__init__``
    re-exporting its own children aside."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 and not all(c.startswith(min(comp, key=len)) for c in comp):
                found.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_lazy_imports_counted() -> None:
    assert _cycles() == []


def test_the_cycle_check_sees_a_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    # the check is real: a lazy import back up (as config -> unlearn -> train -> config was) is a circle
    monkeypatch.setitem(GRAPH, "fedshare.config", GRAPH["fedshare.config"] | {"fedshare.run.inprocess"})
    assert any("fedshare.config" in c for c in _cycles())


def test_imports_run_downhill() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("fedshare") and not module.startswith("fedshare.run"):
            assert not {t for t in targets if t.startswith("lightning_modules")}, (
                f"{module} imports a LightningModule file; only the run driver (fedshare/run/) may"
            )
        if module not in ENTRY_POINTS:
            assert not targets & ENTRY_POINTS, f"{module} imports an entry point: {targets & ENTRY_POINTS}"
        if module.startswith("fedshare.flower"):
            assert "fedshare.train" not in targets


def test_every_import_inside_a_function_says_why() -> None:
    """An import inside a function keeps a heavy optional dependency (DGL, W&B, Flower,
    matplotlib, ...) out of a process that does not need it; its first line says which."""
    silent = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            imports = [
                n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom) and n is not fn
            ]
            if imports:
                first = min(imports, key=lambda n: n.lineno)
                here, above = lines[first.lineno - 1], lines[first.lineno - 2].strip()
                if "#" not in here and not above.startswith("#"):
                    silent.append(f"{path.relative_to(ROOT)}:{first.lineno}: {here.strip()}")
    assert silent == []


def test_no_second_copy_of_an_unlearning_default() -> None:
    """The methods read their options (``unlearn.<name>`` in configs/config.yaml) without a fallback."""
    copies = []
    for path in (ROOT / "fedshare" / "unlearning").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and "opt" in ast.unparse(node.func.value)
                and len(node.args) > 1
            ):
                copies.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert copies == []


def test_every_method_option_is_in_the_yaml() -> None:
    from fedshare.config import compose
    from fedshare.unlearning.registry import METHODS

    ucfg = compose([]).unlearn
    for name, method in METHODS.items():
        source = Path(sys.modules[method.run.__module__].__file__).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("opts", "ctx.options"):
                key = ast.literal_eval(node.slice)
                assert name in ucfg and key in ucfg[name], f"unlearn.{name}.{key} is read but not in the YAML"


def test_method_lists_are_read_from_the_registry() -> None:
    from fedshare.flower import launch
    from fedshare.reporting import unlearning_page
    from fedshare.unlearning import registry

    assert unlearning_page.METHODS == list(registry.METHODS)
    assert registry.names(on_flower=True) == ["contrastive", "delete_only"]
    # no other module spells the list out
    for path in (ROOT / "fedshare").rglob("*.py"):
        if path.name != "registry.py":
            assert '"fedEraser", "fru"' not in path.read_text(), path
    assert launch.names is registry.names


def test_a_new_method_is_one_registry_entry(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering one entry is all it takes: the config accepts it, the run runs and judges it,
    and the report shows its label."""
    from fedshare.config import compose
    from fedshare.reporting.unlearning_page import comparison_rows
    from fedshare.train import train
    from fedshare.unlearning import delete_only, registry

    entry = registry.Method("keep_all", delete_only.delete_only, "", None, on_flower=True, label="Keep all")
    monkeypatch.setitem(registry.METHODS, "keep_all", entry)
    monkeypatch.setattr(registry, "_ENTRIES", [*registry._ENTRIES, entry])
    cfg = compose(
        [
            *tiny,
            "experiment=fedshare",
            "fed.rounds=3",
            "logger=none",
            "unlearn.methods=[keep_all,delete_only]",
            "unlearn.requests.user_fraction=0.5",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    metrics, _ = train(cfg)
    assert metrics["unlearn/keep_all/test/recall@20"] == metrics["unlearn/delete_only/test/recall@20"]
    _, rows = comparison_rows(metrics)
    assert [r[0] for r in rows] == ["before (learned)", "delete_only", "Keep all"]
