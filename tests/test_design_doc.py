"""docs/DESIGN.md section 5 ("The house") lists the folders and config groups that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _house() -> dict[str, list[str]]:
    """Top-level entry of the section's layout block -> its lines (the entry's own line first)."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    section = text.split("## 5. The house", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    entries: dict[str, list[str]] = {}
    current = ""
    for line in block.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
        if current:
            entries.setdefault(current, []).append(line)
    return entries


def test_config_groups_named_are_the_config_folders() -> None:
    described = " ".join(_house()["configs/"])
    named = set(re.findall(r"\b([a-z_]+)/", described)) - {"configs"}
    folders = {p.name for p in (REPO / "configs").iterdir() if p.is_dir()}
    assert named == folders, f"DESIGN.md names {sorted(named)}; configs/ holds {sorted(folders)}"
    assert "`unlearn:`" in described  # the unlearning keys live in config.yaml, not in a group


def test_fedshare_line_lists_its_packages_and_entry_points() -> None:
    lines = _house()["fedshare/"]
    listed = {m.group(1) for line in lines[1:] if (m := re.match(r"^\s+([a-z_]+)/\s", line))}
    packages = {p.parent.name for p in (REPO / "fedshare").glob("*/__init__.py")}
    assert listed == packages, f"DESIGN.md lists {sorted(listed)}; fedshare/ holds {sorted(packages)}"
    head = " ".join(line for line in lines if not re.match(r"^\s+[a-z_]+/\s", line))
    mains = {p.stem for p in (REPO / "fedshare").glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    assert mains and all(re.search(rf"\b{name}\b", head) for name in mains), (mains, head)
