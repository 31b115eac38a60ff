"""Run records: every run folder the docs link to is committed, and the page commands refuse to
write a page naming a record git does not track (`fedshare.reporting.records`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedshare import report as report_cli
from fedshare import results as results_cli
from fedshare.reporting.records import untracked_records, work_tree
from tests.reporting.test_report import make_run

ROOT = Path(__file__).resolve().parents[2]
RECORDS = "docs/runs"
# a Markdown link's target, and a path into docs/runs/ written in the text (relative to the root)
LINK = re.compile(r"\]\((?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\)")
MENTION = re.compile(r"(?<![\w./-])docs/runs/[\w.-][\w./-]*")


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _record_paths(page: Path, root: Path = ROOT) -> set[str]:
    """Paths into docs/runs/ that ``page`` links to or names, relative to the repository ``root``."""
    text = page.read_text(encoding="utf-8")
    found = set()
    for bracketed, plain in LINK.findall(text):
        target = (bracketed or plain).split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # URL, mailto:, ...
            continue
        path = Path(os.path.normpath(page.parent / target))
        if path.is_relative_to(root / RECORDS):
            found.add(path.relative_to(root).as_posix())
    for mention in MENTION.findall(text):
        found.add(os.path.normpath(mention.rstrip(".,;:")))
    return found


def test_every_record_the_docs_name_is_tracked() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout (no .git): cannot tell which files are tracked")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    tracked = set(filter(None, listed.split("\0")))
    missing = []
    for page in _doc_pages():
        for path in sorted(_record_paths(page)):
            if path in tracked or any(f.startswith(path.rstrip("/") + "/") for f in tracked):
                continue
            missing.append(f"{page.relative_to(ROOT)} -> {path}")
    assert not missing, "links into docs/runs/ to files git does not track:\n" + "\n".join(missing)


def test_the_finder_sees_links_and_mentions(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(
        "[m](runs/a/metrics.json) and `docs/runs/b/`. ![f](<../docs/runs/c/f 1.png>) "
        "[web](https://example.com/docs/runs/z) [other](../README.md#docs) [top](runs.md)\n"
    )
    assert _record_paths(page, tmp_path) == {"docs/runs/a/metrics.json", "docs/runs/b", "docs/runs/c/f 1.png"}


# ------------------------------------------------------------------------- a repository in tmp_path
def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git work tree: docs/runs/kept (committed), docs/runs/new (untracked), runs/hidden (ignored)."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.name", "test")
    git(root, "config", "user.email", "test@example.com")
    (root / ".gitignore").write_text("/runs/\n")
    for name in ("docs/runs/kept", "docs/runs/new", "runs/hidden"):
        make_run(root / name)
    git(root, "add", ".gitignore", "docs/runs/kept")
    git(root, "commit", "-q", "-m", "records")
    monkeypatch.chdir(root)
    return root


def test_work_tree(repo: Path, tmp_path: Path) -> None:
    assert work_tree(repo / "docs" / "not-yet" / "deeper") == repo.resolve()
    assert work_tree(tmp_path) is None


def test_a_tracked_record_passes(repo: Path) -> None:
    assert untracked_records(Path("docs/UNLEARNING.md"), ["docs/runs/kept"]) == []
    assert untracked_records(repo / "docs" / "UNLEARNING.md", [repo / "docs" / "runs" / "kept"]) == []


def test_untracked_and_ignored_records_fail(repo: Path) -> None:
    errors = untracked_records(Path("docs/UNLEARNING.md"), ["docs/runs/kept", "docs/runs/new", "runs/hidden"])
    assert len(errors) == 2
    new, hidden = errors
    assert "run record docs/runs/new is not tracked" in new
    assert ".gitignore does not hide it" in new and "git add" in new
    assert "run record runs/hidden is not tracked" in hidden
    assert ".gitignore hides it (.gitignore:1: /runs/)" in hidden and "git add" in hidden


def test_a_record_outside_the_repository_fails(repo: Path, tmp_path: Path) -> None:
    outside = make_run(tmp_path / "elsewhere")
    (error,) = untracked_records(Path("docs/UNLEARNING.md"), [outside])
    assert f"run record {outside} is not tracked" in error and "outside that work tree" in error


def test_a_page_outside_any_repository_is_not_checked(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "a")
    assert untracked_records(tmp_path / "docs" / "UNLEARNING.md", [run]) == []


def test_no_git_means_nothing_to_check(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    assert untracked_records(Path("docs/UNLEARNING.md"), ["runs/hidden"]) == []


def test_report_refuses_an_untracked_record_and_writes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path("docs/UNLEARNING.md")
    assert report_cli.main(["docs/runs/kept", "runs/hidden", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fedshare.report: error: run record runs/hidden is not tracked" in err
    assert ".gitignore hides it" in err and "docs/runs/kept" not in err
    assert f"nothing written to {out}" in err
    assert not out.exists() and not list((repo / "docs").glob(".UNLEARNING.md.*"))

    assert report_cli.main(["docs/runs/kept", "--out", str(out)]) == 0
    assert "Run folder: `docs/runs/kept`" in out.read_text()


def test_report_cli_end_to_end(repo: Path) -> None:
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    cmd = [sys.executable, "-m", "fedshare.report", "docs/runs/new", "--out", "docs/UNLEARNING.md"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "run record docs/runs/new is not tracked" in done.stderr
    assert "nothing written to docs/UNLEARNING.md" in done.stderr
    assert not (repo / "docs" / "UNLEARNING.md").exists()


# ----------------------------------------------------------------------------------- results page
def _finished_run(root: Path) -> Path:
    folder = root / "ml-100k" / "fedmf" / "seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test/recall@20": 0.3, "test/ndcg@20": 0.2}))
    return folder


def _results_args(runs_root: Path, out: Path) -> list[str]:
    return ["--datasets", "ml-100k", "--seeds", "0", "--methods", "FedMF", "--collect-only"] + [
        "--runs-root",
        str(runs_root),
        "--out",
        str(out),
    ]


def test_results_refuses_untracked_runs_in_its_repository(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = repo / "docs" / "RESULTS.md"
    runs_root = repo / "runs" / "results"  # hidden by /runs/, as the default runs/results is
    folder = _finished_run(runs_root)
    assert results_cli.main(_results_args(runs_root, out)) == 2
    err = capsys.readouterr().err
    assert f"error: run record {folder} is not tracked" in err and ".gitignore hides it" in err
    assert f"nothing written to {out} or {out.with_suffix('.json')}" in err
    assert not out.exists() and not out.with_suffix(".json").exists()

    git(repo, "add", "-f", str(folder / "metrics.json"))  # a committed record: the page is written
    assert results_cli.main(_results_args(runs_root, out)) == 0
    assert "0.3000" in out.read_text()


def test_results_does_not_check_runs_outside_the_pages_repository(repo: Path, tmp_path: Path) -> None:
    runs_root = tmp_path / "outside-runs"
    _finished_run(runs_root)
    out = repo / "docs" / "RESULTS.md"
    assert results_cli.main(_results_args(runs_root, out)) == 0  # runs root not in the page's tree
    out = tmp_path / "page" / "RESULTS.md"
    runs_root = repo / "runs" / "results"
    _finished_run(runs_root)
    assert results_cli.main(_results_args(runs_root, out)) == 0  # page in no repository
    assert out.is_file()
