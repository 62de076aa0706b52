"""docs/bad-inputs.md lists only cases that a test proves: every table row names a test, and every test it
names exists (the function, and the parameter id where one is given)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"
SURFACES = ("CLI tables", "CLI images", "Models and tracking", "Inbox", "REST", "Explore", "Retrain")

_LEGEND = re.compile(r"`(?P<abbr>[A-Z]+)` =\s+`(?P<path>tests/[\w/]+\.py)`")
_ALIAS = re.compile(r"`(?P<abbr>[A-Z]+)::(?P<alias>\w+)\[x\]` is\s+`(?P=abbr)::(?P<name>\w+)\[x\]`")
_REF = re.compile(r"`(?:(?P<abbr>[A-Z]+)|(?P<path>tests/[\w/]+\.py))::(?P<name>\w+|\*)(?:\[(?P<param>[^\]]+)\])?`")


def _rows(text: str) -> list[str]:
    """The body rows of every markdown table (header and separator rows left out)."""
    rows, previous = [], ""
    for line in text.splitlines():
        separator = re.fullmatch(r"\|[\s\-:|]+\|", line.strip())
        if line.startswith("|") and not separator and previous.startswith("|"):
            rows.append(line)
        previous = line if line.startswith("|") else ""
    return rows


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_listed_case_names_a_test_that_exists():
    text = DOC.read_text()
    legend = {m["abbr"]: m["path"] for m in _LEGEND.finditer(text)}
    aliases = {(m["abbr"], m["alias"]): m["name"] for m in _ALIAS.finditer(text)}
    problems, checked = [], 0
    for row in _rows(text):
        test_cell = row.rstrip().rstrip("|").rsplit("|", 1)[-1]
        refs = list(_REF.finditer(test_cell))
        if not refs:
            problems.append(f"no test named for: {row[:100]}")
        for ref in refs:
            rel = ref["path"] or legend.get(ref["abbr"] or "")
            if rel is None or not (ROOT / rel).is_file():
                problems.append(f"unknown test file {ref[0]}")
                continue
            name = aliases.get((ref["abbr"], ref["name"]), ref["name"])
            source = (ROOT / rel).read_text()
            if name != "*" and name not in _functions(ROOT / rel):
                problems.append(f"{ref[0]}: no function {name} in {rel}")
            if ref["param"] and f'"{ref["param"]}"' not in source:
                problems.append(f"{ref[0]}: no parameter id {ref['param']!r} in {rel}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked > 100


def test_every_surface_has_a_section():
    headings = [line[3:] for line in DOC.read_text().splitlines() if line.startswith("## ")]
    missing = [s for s in SURFACES if not any(h.startswith(s) for h in headings)]
    assert not missing, f"docs/bad-inputs.md has no section for {missing}; its sections: {headings}"


def test_the_checker_catches_a_row_without_a_test_and_a_test_that_does_not_exist():
    rows = _rows("| a | b |\n| --- | --- |\n| x | `B::test_nothing` |\n| y | - |\n")
    assert rows == ["| x | `B::test_nothing` |", "| y | - |"]
    assert not list(_REF.finditer(rows[1].rsplit("|", 2)[-2]))
    assert "test_nothing" not in _functions(Path(__file__))
