"""docs/api.md opens with a table per category, and the tables cannot drift.

The reference below them is generated (``::: streamkit.name`` directives under
``## Category`` headings), so it is blank when the page is read in the
repository. The "At a glance" section before the first category gives, for
every category, a bold link to its heading followed by a table with one row
per public name::

    **[Transform](#transform)**

    | Name | Summary |
    | --- | --- |
    | [`map_`](#streamkit.map_) | Apply ``fn`` to every item. |

The tests check that

* every name in ``streamkit.__all__``, ``streamkit.testing.__all__``,
  ``streamkit.typing.__all__``, ``streamkit.otel.__all__``,
  ``streamkit.redis.__all__`` and ``streamkit.kafka.__all__`` has exactly one
  row (the testing kit's re-exports of ``streamkit`` names excepted), and every
  row names one of them;
* a row links to the object's anchor in the reference and sits in the table
  of the category whose section holds the object's ``:::`` directive;
* the summary is the first line of the object's docstring, as the reference
  shows it (read with griffe, as mkdocstrings does).

A new public name therefore needs a ``:::`` directive (tests/test_docs.py) and a
row; a failing test prints the row to add.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

import streamkit
import streamkit.kafka
import streamkit.otel
import streamkit.redis
import streamkit.testing
import streamkit.typing

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"
GLANCE = "At a glance"

_HEADING = re.compile(r"^## (?P<title>.+?)\s*$")
_CATEGORY = re.compile(r"^\*\*\[(?P<title>[^\]]+)\]\(#(?P<anchor>[^)]+)\)\*\*$")
_ROW = re.compile(r"^\| \[`(?P<short>[^`]+)`\]\(#(?P<target>[^)]+)\) \| (?P<summary>.*) \|$")
_DIRECTIVE = re.compile(r"^::: *(?P<name>\S+)")


@dataclasses.dataclass(frozen=True)
class Row:
    category: str
    short: str
    target: str
    summary: str
    line: int


def public_names() -> list[str]:
    """The qualified names the tables must list."""
    names = [f"streamkit.{name}" for name in streamkit.__all__]
    exported = {id(getattr(streamkit, name)) for name in streamkit.__all__}
    modules = (
        streamkit.testing,
        streamkit.typing,
        streamkit.otel,
        streamkit.redis,
        streamkit.kafka,
    )
    for module in modules:
        for name in module.__all__:
            if id(getattr(module, name)) not in exported:  # e.g. testing's use_clock
                names.append(f"{module.__name__}.{name}")
    return names


def _slug(title: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[^\w\s-]", "", title.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def parse_page(text: str) -> tuple[list[Row], dict[str, str]]:
    """The tables' rows, and the category section of every ``:::`` directive."""
    rows: list[Row] = []
    directives: dict[str, str] = {}
    section: str | None = None
    category: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading is not None:
            section, category = heading["title"], None
            continue
        if section == GLANCE:
            bold = _CATEGORY.match(line)
            if bold is not None:
                assert bold["anchor"] == _slug(bold["title"]), (
                    f"docs/api.md:{number}: {bold['title']} links to #{bold['anchor']}"
                )
                category = bold["title"]
                continue
            row = _ROW.match(line)
            if row is not None:
                assert category is not None, f"docs/api.md:{number}: a row before any category"
                summary = row["summary"].replace("\\|", "|")
                rows.append(Row(category, row["short"], row["target"], summary, number))
            elif line.startswith("| [") or (line.startswith("|") and "`" in line):
                pytest.fail(f"docs/api.md:{number}: not a table row of the form {_ROW.pattern}")
        elif section is not None:
            directive = _DIRECTIVE.match(line)
            if directive is not None:
                directives[directive["name"]] = section
    return rows, directives


def section_of(name: str, directives: dict[str, str]) -> str | None:
    """The category of a name: that of its directive, or of its module's."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        found = directives.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _summaries() -> dict[str, str]:
    """The first docstring line of every public name, as mkdocstrings reads it."""
    import griffe  # the docs extra: mkdocstrings' loader

    summaries: dict[str, str] = {}
    modules: dict[str, Any] = {}
    for name in public_names():
        module_name, _, attribute = name.rpartition(".")
        if module_name not in modules:
            modules[module_name] = griffe.load(module_name, search_paths=[str(ROOT)])
        docstring = modules[module_name][attribute].docstring
        summaries[name] = docstring.value.splitlines()[0].strip() if docstring else ""
    return summaries


def expected_row(name: str, summary: str) -> str:
    return f"| [`{name.rpartition('.')[2]}`](#{name}) | {summary.replace('|', chr(92) + '|')} |"


@pytest.fixture(scope="module")
def page() -> tuple[list[Row], dict[str, str]]:
    return parse_page(API.read_text(encoding="utf-8"))


def test_the_page_opens_with_the_tables() -> None:
    headings = [m["title"] for m in map(_HEADING.match, API.read_text().splitlines()) if m]
    assert headings[0] == GLANCE


def test_every_public_name_has_one_row(page: tuple[list[Row], dict[str, str]]) -> None:
    rows, directives = page
    listed = [row.target for row in rows]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"docs/api.md lists these more than once: {twice}"
    missing = [name for name in public_names() if name not in listed]
    assert not missing, "add these rows to docs/api.md's tables:\n" + "\n".join(
        f"{section_of(name, directives)}: {expected_row(name, '<first docstring line>')}"
        for name in missing
    )


def test_every_row_is_a_public_name(page: tuple[list[Row], dict[str, str]]) -> None:
    rows, _ = page
    public = set(public_names())
    for row in rows:
        assert row.target in public, f"docs/api.md:{row.line}: {row.target} is not public"
        assert row.short == row.target.rpartition(".")[2], (
            f"docs/api.md:{row.line}: `{row.short}` links to #{row.target}"
        )


def test_rows_sit_in_their_category(page: tuple[list[Row], dict[str, str]]) -> None:
    rows, directives = page
    categories = set(directives.values())
    for row in rows:
        assert row.category in categories, f"docs/api.md:{row.line}: no section {row.category}"
        section = section_of(row.target, directives)
        assert row.category == section, (
            f"docs/api.md:{row.line}: {row.target} is in the {row.category} table, "
            f"its reference in the {section} section"
        )


def test_summaries_are_the_docstrings_first_lines(page: tuple[list[Row], dict[str, str]]) -> None:
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("griffe is not installed (pip install -e '.[docs]')")
    rows, _ = page
    summaries = _summaries()
    wrong = [
        f"docs/api.md:{row.line}: {expected_row(row.target, summaries[row.target])}"
        for row in rows
        if row.target in summaries and row.summary != summaries[row.target]
    ]
    assert not wrong, "these rows' summaries differ from the docstrings:\n" + "\n".join(wrong)
    assert all(summaries.values()), [name for name, summary in summaries.items() if not summary]


# --------------------------------------------------------------------------- the parser itself


_SAMPLE = """# API reference

## At a glance

**[Transform](#transform)**

| Name | Summary |
| --- | --- |
| [`map_`](#streamkit.map_) | Apply ``fn`` to every item. |
| [`pipe`](#streamkit.pipe) | Compose stages \\| left to right. |

**[Testing](#testing)**

| Name | Summary |
| --- | --- |
| [`check_stage`](#streamkit.testing.check_stage) | Run a stage. |

## Transform

::: streamkit.map_

## Core

::: streamkit.pipe

## Testing

::: streamkit.testing
"""


def test_the_parser_reads_rows_and_sections() -> None:
    rows, directives = parse_page(_SAMPLE)
    assert [(row.category, row.short, row.target, row.summary) for row in rows] == [
        ("Transform", "map_", "streamkit.map_", "Apply ``fn`` to every item."),
        ("Transform", "pipe", "streamkit.pipe", "Compose stages | left to right."),
        ("Testing", "check_stage", "streamkit.testing.check_stage", "Run a stage."),
    ]
    assert section_of("streamkit.testing.check_stage", directives) == "Testing"
    assert section_of("streamkit.pipe", directives) == "Core"  # not Transform: a wrong table
    assert section_of("streamkit.take", directives) is None


def test_a_category_link_must_match_its_heading() -> None:
    with pytest.raises(AssertionError, match="links to #core"):
        parse_page("## At a glance\n\n**[Transform](#core)**\n")


def test_the_slug_is_the_toc_anchor() -> None:
    assert _slug("OpenTelemetry") == "opentelemetry"
    assert _slug("Error strategies: `on_error=`") == "error-strategies-on_error"
