"""A generated page may name only run records committed in the repository the page lives in.

A figure on a page (``docs/UNLEARNING.md``, ``docs/RESULTS.md``) is backed by its run record (the
run folder's small files: ``config.yaml``, ``command.txt``, ``metrics.json``, ...). A record that
git does not track (a folder under a path ``.gitignore`` hides, or one never added) would leave the
committed page pointing at nothing, so the page commands refuse to write such a page.

``untracked_records(page, records)`` finds the git work tree enclosing the page's folder
(``git rev-parse --show-toplevel``); when there is none, or git is not installed, there is nothing
to check. Otherwise each record must have at least one tracked file (``git ls-files -- PATH``);
for each one that has none it returns an error naming the record, saying whether ``.gitignore``
hides it (``git check-ignore``) and how to fix it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

SMALL_FILES = "config.yaml, command.txt, metrics.json, history.json, logs, figures"


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """``git ARGS`` in ``cwd``; ``None`` when git is not installed."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (a page's folder may not exist yet)."""
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def work_tree(path: str | Path) -> Path | None:
    """The top of the git work tree holding folder ``path``; ``None`` if none or no git."""
    done = _git(_existing_folder(Path(path)), "rev-parse", "--show-toplevel")
    if done is None or done.returncode != 0 or not done.stdout.strip():
        return None
    return Path(done.stdout.strip()).resolve()


def inside(path: str | Path, top: Path) -> bool:
    """Whether ``path`` (relative to the current folder) lies in the work tree ``top``."""
    return Path(os.path.realpath(path)).is_relative_to(top)


def _hidden_by(top: Path, rel: str) -> str | None:
    """The ``.gitignore`` rule that hides ``rel`` (``source:line: pattern``), ``None`` if none."""
    done = _git(top, "check-ignore", "-v", "--", rel)  # takes no pathspec magic: a plain path
    if done is None or done.returncode != 0 or not done.stdout.strip():
        return None
    rule = done.stdout.strip().splitlines()[0].split("\t", 1)[0]
    source, line, pattern = (rule.split(":", 2) + ["", ""])[:3]
    return f"{source}:{line}: {pattern}" if line else rule


def untracked_records(page: str | Path, records: Iterable[str | Path]) -> list[str]:
    """One error per record the page at ``page`` would name with no file tracked by git.

    ``records``: the run folders the page names, as the page shows them (relative to the current
    folder). Empty when the page's folder is in no git work tree or git is not installed.
    """
    top = work_tree(Path(page).parent)
    if top is None:
        return []
    errors: list[str] = []
    for record in dict.fromkeys(str(r) for r in records):
        real = Path(os.path.realpath(record))
        if not real.is_relative_to(top):
            errors.append(
                f"run record {record} is not tracked in the git repository {top} that holds the page "
                f"{page}: it lies outside that work tree. Move it into the repository (e.g. under "
                f"docs/runs/) and commit its small files ({SMALL_FILES}), then run again"
            )
            continue
        rel = real.relative_to(top).as_posix() or "."
        listed = _git(top, "--literal-pathspecs", "ls-files", "--", rel)
        if listed is not None and listed.returncode == 0 and listed.stdout.strip():
            continue
        hidden = _hidden_by(top, rel)
        if hidden is not None:
            why = f"no file of it is in the index and .gitignore hides it ({hidden})"
            fix = (
                f"commit its small files ({SMALL_FILES}; never its checkpoints or stores) with "
                f"`git add -f {rel}/<file> ...`, or write the run where .gitignore lets them be "
                "added (under docs/runs/)"
            )
        else:
            why = "no file of it is in the index (.gitignore does not hide it)"
            fix = f"commit its small files ({SMALL_FILES}; never its checkpoints or stores): `git add {rel}`"
        errors.append(
            f"run record {record} is not tracked in the git repository {top}: {why}. "
            f"A page may name only committed records: {fix}, then run again"
        )
    return errors
