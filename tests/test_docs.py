"""The docs render (issue 27): every Markdown table in README.md and docs/*.md is one contiguous block of `|`
rows under a header and a separator row, each row with the header's number of cells. A table cut by a blank
line renders its second half as raw pipes; this finds it without a Markdown dependency."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def cells(row: str) -> int:
    """Number of cells in a `| a | b |` row; `\\|` and pipes inside `code spans` are not cell borders."""
    row = re.sub(r"`[^`]*`", "``", row.replace("\\|", ""))
    return row.strip().strip("|").count("|") + 1


def table_problems(text: str) -> list[str]:
    """One line per broken table in a Markdown text: a `|` block (outside code fences) that lacks the
    separator row under its header, or whose rows have other cell counts than the header."""
    problems, block, start, fenced = [], [], 0, False
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row:
            if not block:
                start = number
            block.append(line.rstrip())
            continue
        if block:
            if len(block) < 2 or not SEPARATOR.match(block[1]):
                problems.append(f"line {start}: a table without a header separator row (cut by a blank line?)")
            else:
                width = cells(block[0])
                for offset, row in enumerate(block):
                    if cells(row) != width:
                        problems.append(f"line {start + offset}: {cells(row)} cells, the header has {width}")
            block = []
    return problems


def test_the_check_finds_a_cut_table() -> None:
    whole = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    assert table_problems(whole) == []
    assert table_problems(whole.replace("| 1 | 2 |\n", "| 1 | 2 |\n\n")) == [
        "line 5: a table without a header separator row (cut by a blank line?)"]
    assert table_problems(whole.replace("| 3 | 4 |", "| 3 | 4 | 5 |")) == ["line 4: 3 cells, the header has 2"]
    assert table_problems("```\n| not | a table |\n```\n") == []
    assert table_problems("| a | `x | y` |\n|---|---|\n") == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_table_renders(path: Path) -> None:
    assert table_problems(path.read_text()) == [], path.name
