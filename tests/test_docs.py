"""The documentation is tested like code.

* Every ```python block in docs/*.md, README.md and CHANGELOG.md is executed.
  The blocks of one page run in order in one namespace (a fresh one per page).
  A block immediately followed by a ```text block must print exactly that text.
  Top-level ``await`` is not allowed: examples call ``asyncio.run(main())``.
  A block preceded by ``<!-- no-test -->`` is skipped; keep that for fragments
  that cannot run on their own. The blocks also pass ``mypy --strict``.
  A block preceded by ``<!-- signature -->`` shows a signature; it is not run
  but compared with the real one (tests/test_doc_signatures.py).
* docs/api.md documents every name in ``streamkit.__all__`` (read at run
  time, so a new export cannot be forgotten), and every public callable has a
  docstring example with ``>>>`` (those run under ``--doctest-modules``).
* ``mkdocs build --strict`` succeeds: no warning, no broken link or anchor;
  README.md and CHANGELOG.md links resolve; ``make demo`` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import streamkit
import streamkit.kafka
import streamkit.otel
import streamkit.redis
import streamkit.testing
import streamkit.typing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
SIGNATURE = "<!-- signature -->"

# A fence opening line: indentation, three or more backticks, the info string.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    language: str
    code: str
    skipped: bool
    expected_output: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line before the current position
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].startswith(indent) and lines[j].strip() == fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        assert j < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence"
        blocks.append(
            Block(
                path=path,
                line=i + 1,
                end=j + 1,
                language=language,
                code=textwrap.dedent("\n".join(body)) + "\n",
                skipped=previous in {NO_TEST, SIGNATURE},
            )
        )
        previous = fence
        i = j + 1
    return blocks


def _python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a page, each with the ```text block that follows it."""
    text = path.read_text(encoding="utf-8").splitlines()
    blocks = _fenced_blocks(path)
    result: list[Block] = []
    for position, block in enumerate(blocks):
        if block.language not in {"python", "py"}:
            continue
        expected = None
        following = blocks[position + 1] if position + 1 < len(blocks) else None
        if following is not None and following.language == "text":
            between = text[block.end : following.line - 1]
            if not any(line.strip() for line in between):
                expected = following.code
        result.append(dataclasses.replace(block, expected_output=expected))
    return result


def _pages() -> list[Path]:
    pages = sorted(DOCS.rglob("*.md"))
    pages += [path for path in (ROOT / "README.md", ROOT / "CHANGELOG.md") if path.exists()]
    return pages


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- code blocks


def test_fence_parser_pairs_code_with_output(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n```python\nprint('hi')\n```\n\n```text\nhi\n```\n\n"
        f"{NO_TEST}\n```python\nthis is not python\n```\n\n"
        "  ```python\n  x = 1\n  ```\n\nText.\n\n```text\nunrelated\n```\n",
        encoding="utf-8",
    )
    blocks = _python_blocks(page)
    assert [(b.code, b.skipped, b.expected_output) for b in blocks] == [
        ("print('hi')\n", False, "hi\n"),
        ("this is not python\n", True, None),
        ("x = 1\n", False, None),
    ]


@pytest.mark.parametrize("page", _pages(), ids=_page_id)
def test_python_blocks_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    # The page's blocks run as one module, importable while they run, as a script's
    # __main__ is: checkpoints find the classes of the page's values by their import path.
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, object] = module.__dict__
    for block in _python_blocks(page):
        if block.skipped:
            continue
        try:
            code = compile(block.code, block.where, "exec", dont_inherit=True)
        except SyntaxError as exc:
            hint = (
                " (top-level await is not allowed: wrap the example in "
                "`async def main()` and call `asyncio.run(main())`)"
                if "await" in str(exc.msg)
                else ""
            )
            pytest.fail(f"{block.where}: {exc.msg}{hint}")
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(code, namespace)  # the documentation's own example code
        if block.expected_output is not None:
            assert output.getvalue().rstrip() == block.expected_output.rstrip(), (
                f"{block.where}: the output differs from the text block after it"
            )


def test_python_blocks_type_check(tmp_path: Path) -> None:
    # Readers copy these examples into strictly checked code: they must pass mypy --strict.
    # A page's blocks form one module (a block may redefine a name an earlier one defined),
    # each at its own line numbers, so that mypy's "page_md.py:12" means line 12 of the page.
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[lint]')")
    modules: list[Path] = []
    for page in _pages():
        lines: list[str] = []
        for block in _python_blocks(page):
            if not block.skipped:
                lines += [""] * (block.line - len(lines)) + block.code.splitlines()
        if lines:
            module = tmp_path / (re.sub(r"\W", "_", _page_id(page)) + ".py")
            module.write_text("\n".join(lines) + "\n", encoding="utf-8")
            modules.append(module)
    assert modules, "no ```python block found"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--allow-redefinition"]
        + ["--disable-error-code=no-redef", f"--cache-dir={tmp_path / '.mypy_cache'}"]
        + [str(module) for module in modules],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- API page

# The docstring headers that introduce a runnable example.
_EXAMPLE_HEADERS = ("Example:", "Examples:")


def _api_directives() -> set[str]:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^::: *(\S+)", text, flags=re.MULTILINE))


def _has_example(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    lines = [line.strip() for line in doc.splitlines()]
    for position, line in enumerate(lines):
        if line in _EXAMPLE_HEADERS:
            return any(rest.startswith(">>>") for rest in lines[position + 1 :])
    return False


def _public_callables() -> list[tuple[str, object]]:
    names = [(f"streamkit.{name}", getattr(streamkit, name)) for name in streamkit.__all__]
    names += [
        (f"streamkit.testing.{name}", getattr(streamkit.testing, name))
        for name in streamkit.testing.__all__
    ]
    names += [
        (f"streamkit.typing.{name}", getattr(streamkit.typing, name))
        for name in streamkit.typing.__all__
    ]
    names += [
        (f"streamkit.otel.{name}", getattr(streamkit.otel, name)) for name in streamkit.otel.__all__
    ]
    names += [
        (f"streamkit.redis.{name}", getattr(streamkit.redis, name))
        for name in streamkit.redis.__all__
    ]
    names += [
        (f"streamkit.kafka.{name}", getattr(streamkit.kafka, name))
        for name in streamkit.kafka.__all__
    ]
    # Functions and classes. Type aliases such as `Source` are not called, and exceptions
    # are shown by the examples of what raises them.
    return [
        (name, obj)
        for name, obj in names
        if inspect.isroutine(obj) or (inspect.isclass(obj) and not issubclass(obj, BaseException))
    ]


# Public names that have no runnable example yet. Entries must be removed as
# examples are added (a test below fails for a stale entry); do not add to it.


@pytest.mark.parametrize("name", sorted(streamkit.__all__))
def test_api_page_documents_every_public_name(name: str) -> None:
    assert f"streamkit.{name}" in _api_directives(), (
        f"docs/api.md has no `::: streamkit.{name}`: add it under its category"
    )


def test_api_page_documents_the_testing_kit_and_the_exporter() -> None:
    submodules = {
        "streamkit.testing",
        "streamkit.typing",
        "streamkit.otel",
        "streamkit.redis",
        "streamkit.kafka",
    }
    assert submodules <= _api_directives()


def test_api_page_documents_only_public_names() -> None:
    submodules = {
        "streamkit.testing",
        "streamkit.typing",
        "streamkit.otel",
        "streamkit.redis",
        "streamkit.kafka",
    }
    public = {f"streamkit.{name}" for name in streamkit.__all__} | submodules
    assert _api_directives() <= public


@pytest.mark.parametrize("name", [name for name, _ in _public_callables()])
def test_public_callables_have_an_example(name: str) -> None:
    obj = dict(_public_callables())[name]
    assert _has_example(obj), f"{name}'s docstring needs an `Examples:` section with `>>>` lines"


# --------------------------------------------------------------------------- site build


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """Build the site once, strictly: (site directory, build log, exit status)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return site_dir, result.stdout + result.stderr, result.returncode


def test_mkdocs_build_is_strict_and_clean(site: tuple[Path, str, int]) -> None:
    site_dir, log, status = site
    assert status == 0, log
    assert "WARNING" not in log, log
    assert (site_dir / "api" / "index.html").exists()


def test_docstring_examples_render_as_code(site: tuple[Path, str, int]) -> None:
    # griffe's Google-style parser knows the section "Examples:"; a singular "Example:" is
    # rendered as an admonition whose `>>>` lines turn into nested block quotes.
    api = site[0] / "api" / "index.html"
    assert api.exists(), site[1]
    html = api.read_text(encoding="utf-8")
    assert 'class="gp">&gt;&gt;&gt; </span>' in html
    assert "<blockquote>" not in html, (
        "docstring examples render as block quotes: title the section `Examples:`"
    )


def test_readme_and_changelog_links_resolve() -> None:
    # Pages under docs/ are checked by the strict site build; these two are not part of it.
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md"):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.name} links to {target}, which does not exist"


# --------------------------------------------------------------------------- demo


def test_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "top 10 overall:" in result.stdout
