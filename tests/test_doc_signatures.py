"""The signatures the documentation shows are the real ones.

A documented signature is written the way the function is called, with the
parameter list of its ``def``: ``name(params)``, optionally ``-> annotation``.
The tests find them in docs/**/*.md and README.md in two forms:

* **Blocks.** A fenced code block right after a ``<!-- signature -->`` line
  holds one signature (it may span several lines). tests/test_docs.py does
  not execute such a block. Use this form for long signatures::

      <!-- signature -->
      ```python
      with_retry(stage, /, *, attempts=3, backoff=exponential(), ...)
      ```

* **Inline.** A code span in the text, such as ``buffer(n, /, *,
  overflow="wait", on_drop=None)``, is a signature when it cannot be a call:
  it has a bare ``*`` or ``/`` separator, or a ``-> annotation``. A span that
  is also a valid call (``map_(fn, concurrency=4)``) is an example, not a
  signature, and is not checked; nor is a ``def ...`` span (code, such as a
  signature that does not exist).

``name`` is looked up in `streamkit`, then `streamkit.testing`, then
`streamkit.otel`; ``Class.method`` names a method (written without ``self``)
and ``streamkit.module.name`` a fully qualified object. A class's signature is
that of its constructor.

Each signature is compared with ``inspect.signature`` of the object:

* the parameters, in order, with their names and kinds (positional-only
  before ``/``, keyword-only after ``*`` or ``*args``, ``*args``, ``**kwargs``);
* their defaults: a documented default is evaluated (in the namespace of
  ``streamkit``, ``streamkit.testing`` and ``streamkit.otel``) and must equal
  the real one; ``name=...`` says only that there is a default; a parameter
  shown without a default must have none;
* annotations, where the documentation writes them, must match the source's
  text (after normalising spaces and quotes).

A signature must list every parameter, unless it ends with ``, ...``: then it
shows some of them, in their order, and leaves the others out.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import streamkit
import streamkit.otel
import streamkit.testing
import streamkit.typing
from tests.test_docs import SIGNATURE, _fenced_blocks

ROOT = Path(__file__).resolve().parent.parent

# `name(params)` with an optional `-> annotation`; the name may be dotted.
_SHAPE = re.compile(
    r"^(?P<name>[A-Za-z_][\w.]*)\((?P<params>.*)\)(?:\s*->\s*(?P<returns>.+))?$", re.DOTALL
)
# A code span: text between single backticks (not part of a longer run of backticks).
_SPAN = re.compile(r"(?<!`)`(?!`)([^`]+)`(?!`)")
_NAMESPACES: tuple[Any, ...] = (streamkit, streamkit.testing, streamkit.typing, streamkit.otel)
_PARTIAL = re.compile(r",\s*\.\.\.\s*$")


@dataclasses.dataclass(frozen=True)
class DocParameter:
    name: str
    kind: inspect._ParameterKind
    default: str | None  # the default's source text, None for no default
    annotation: str | None


@dataclasses.dataclass(frozen=True)
class DocSignature:
    name: str
    parameters: tuple[DocParameter, ...]
    partial: bool  # ends with `, ...`: the other parameters are left out
    returns: str | None


@dataclasses.dataclass(frozen=True)
class Found:
    where: str
    text: str


def _normalise(annotation: str) -> str:
    """An annotation's text, spaced and quoted the way `ast.unparse` writes it."""
    try:
        return ast.unparse(ast.parse(annotation.strip(), mode="eval"))
    except SyntaxError:
        return " ".join(annotation.split())


def parse_signature(text: str) -> DocSignature:
    """Read one documented signature; `ValueError` if it is not one."""
    text = " ".join(text.split())
    shape = _SHAPE.match(text)
    if shape is None:
        raise ValueError(f"not of the form name(params) [-> annotation]: {text!r}")
    params = shape["params"]
    partial = _PARTIAL.search(params) is not None or params.strip() == "..."
    if partial:
        params = "" if params.strip() == "..." else _PARTIAL.sub("", params)
        params = re.sub(r"(^|,)\s*\*\s*$", "", params)  # `*, ...`: no keyword shown
    returns = shape["returns"]
    source = f"def _({params}){' -> ' + returns if returns else ''}: ..."
    try:
        function = ast.parse(source).body[0]
    except SyntaxError as exc:
        raise ValueError(f"not a valid parameter list: {text!r} ({exc.msg})") from None
    assert isinstance(function, ast.FunctionDef)
    arguments = function.args

    def annotation(node: ast.arg) -> str | None:
        return None if node.annotation is None else ast.unparse(node.annotation)

    parameters: list[DocParameter] = []
    positional = [
        *((arg, inspect.Parameter.POSITIONAL_ONLY) for arg in arguments.posonlyargs),
        *((arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for arg in arguments.args),
    ]
    first_default = len(positional) - len(arguments.defaults)
    for position, (arg, kind) in enumerate(positional):
        default = (
            arguments.defaults[position - first_default] if position >= first_default else None
        )
        parameters.append(
            DocParameter(
                arg.arg, kind, None if default is None else ast.unparse(default), annotation(arg)
            )
        )
    if arguments.vararg is not None:
        parameters.append(
            DocParameter(
                arguments.vararg.arg,
                inspect.Parameter.VAR_POSITIONAL,
                None,
                annotation(arguments.vararg),
            )
        )
    for arg, kw_default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        parameters.append(
            DocParameter(
                arg.arg,
                inspect.Parameter.KEYWORD_ONLY,
                None if kw_default is None else ast.unparse(kw_default),
                annotation(arg),
            )
        )
    if arguments.kwarg is not None:
        parameters.append(
            DocParameter(
                arguments.kwarg.arg,
                inspect.Parameter.VAR_KEYWORD,
                None,
                annotation(arguments.kwarg),
            )
        )
    return DocSignature(
        name=shape["name"],
        parameters=tuple(parameters),
        partial=partial,
        returns=None if function.returns is None else ast.unparse(function.returns),
    )


def is_signature(text: str) -> bool:
    """Whether a code span is a signature: shaped like one, but not a valid call."""
    text = " ".join(text.split())
    shape = _SHAPE.match(text)
    if shape is None:
        return False
    if shape["returns"] is not None:
        return True
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        pass
    else:
        return False  # a call, e.g. `map_(fn, concurrency=4)`
    try:
        parse_signature(text)
    except ValueError:
        return False
    return True


def resolve(name: str) -> tuple[object, bool]:
    """The object a documented name stands for, and whether it is a method."""
    parts = name.split(".")
    obj: object
    if parts[0] == "streamkit":
        obj, rest = streamkit, parts[1:]
        while rest and hasattr(obj, rest[0]):
            obj, rest = getattr(obj, rest[0]), rest[1:]
        if rest:
            raise LookupError(f"{name}: streamkit has no such object")
        parent = None
    else:
        namespace = next((ns for ns in _NAMESPACES if hasattr(ns, parts[0])), None)
        if namespace is None:
            raise LookupError(
                f"{parts[0]} is not in streamkit, streamkit.testing or streamkit.otel "
                "(write Class.method or a full streamkit.... name)"
            )
        obj, parent = getattr(namespace, parts[0]), None
        for part in parts[1:]:
            parent, obj = obj, getattr(obj, part)
    method = inspect.isclass(parent) and inspect.isfunction(
        inspect.getattr_static(parent, parts[-1])
    )
    return obj, method


def _default_namespace() -> dict[str, object]:
    namespace: dict[str, object] = dict(vars(builtins))
    for module in reversed(_NAMESPACES):
        namespace.update({name: getattr(module, name) for name in module.__all__})
    return namespace


def _real_annotation(annotation: object) -> str:
    if isinstance(annotation, str):
        return _normalise(annotation)
    return _normalise(inspect.formatannotation(annotation))


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional-only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional-or-keyword",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def compare(documented: DocSignature, real: inspect.Signature) -> list[str]:
    """What differs between a documented signature and the real one (empty: nothing)."""
    problems: list[str] = []
    actual = {parameter.name: parameter for parameter in real.parameters.values()}
    order = list(actual)
    shown = [parameter.name for parameter in documented.parameters]
    unknown = [name for name in shown if name not in actual]
    if unknown:
        problems.append(f"no parameter named {', '.join(unknown)}")
    known = [name for name in shown if name in actual]
    if known != sorted(known, key=order.index):
        problems.append(f"parameters out of order: documented {known}, real {order}")
    missing = [name for name in order if name not in shown]
    if missing and not documented.partial:
        problems.append(
            f"leaves out {', '.join(missing)} (list them, or end with `, ...` to show a part)"
        )
    namespace = _default_namespace()
    for parameter in documented.parameters:
        if parameter.name not in actual:
            continue
        true = actual[parameter.name]
        if parameter.kind != true.kind:
            problems.append(
                f"{parameter.name} is {_KINDS[true.kind]}, documented as {_KINDS[parameter.kind]}"
            )
        has_default = true.default is not inspect.Parameter.empty
        if parameter.default is None:
            if has_default:
                problems.append(f"{parameter.name} has a default, {true.default!r}, not shown")
        elif not has_default:
            problems.append(f"{parameter.name} has no default, documented as {parameter.default}")
        elif parameter.default != "...":
            try:
                value = eval(parameter.default, namespace)  # a default from the docs
            except Exception as exc:  # reported as a mismatch
                problems.append(f"{parameter.name}'s default {parameter.default} fails: {exc!r}")
            else:
                if not (value is true.default or value == true.default):
                    problems.append(
                        f"{parameter.name} defaults to {true.default!r}, "
                        f"documented as {parameter.default}"
                    )
        if parameter.annotation is not None:
            expected = _real_annotation(true.annotation)
            if _normalise(parameter.annotation) != expected:
                problems.append(
                    f"{parameter.name} is annotated {expected}, documented as "
                    f"{parameter.annotation}"
                )
    if documented.returns is not None:
        expected = _real_annotation(real.return_annotation)
        if _normalise(documented.returns) != expected:
            problems.append(f"returns {expected}, documented as {documented.returns}")
    return problems


def real_signature(name: str) -> inspect.Signature:
    obj, method = resolve(name)
    assert callable(obj), f"{name} is not callable"
    signature = inspect.signature(obj)
    if method:  # `Class.method` is documented without `self`
        parameters = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=parameters)
    return signature


# --------------------------------------------------------------------------- finding them


def _pages() -> list[Path]:
    pages = sorted((ROOT / "docs").rglob("*.md"))
    return [*pages, ROOT / "README.md"]


def find_signatures(path: Path) -> list[Found]:
    """Every documented signature of a Markdown page, blocks first, then inline ones."""
    lines = path.read_text(encoding="utf-8").splitlines()
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found: list[Found] = []
    prose = list(lines)
    for block in _fenced_blocks(path):
        before = [line.strip() for line in lines[: block.line - 1] if line.strip()]
        if before and before[-1] == SIGNATURE:
            found.append(Found(f"{where}:{block.line}", block.code))
        for number in range(block.line - 1, block.end):
            prose[number] = ""
    text = "\n".join(prose)
    for span in _SPAN.finditer(text):
        if is_signature(span[1]):
            line = text.count("\n", 0, span.start()) + 1
            found.append(Found(f"{where}:{line}", span[1]))
    return found


def _documented() -> list[Found]:
    return [found for page in _pages() for found in find_signatures(page)]


# Signatures known to be wrong: (page, name) -> what is wrong. An entry whose
# signature is fixed fails (xfail is strict) and must then be removed.
_KNOWN_WRONG: dict[tuple[str, str], str] = {}


def _cases() -> list[Any]:
    cases: list[Any] = []
    for found in _documented():
        known = _KNOWN_WRONG.get((found.where.split(":")[0], parse_signature(found.text).name))
        marks = [] if known is None else [pytest.mark.xfail(reason=known, strict=True)]
        cases.append(pytest.param(found, id=found.where, marks=marks))
    return cases


def test_known_wrong_signatures_are_still_documented() -> None:
    found = {(f.where.split(":")[0], parse_signature(f.text).name) for f in _documented()}
    assert set(_KNOWN_WRONG) <= found


@pytest.mark.parametrize("found", _cases())
def test_documented_signature_is_the_real_one(found: Found) -> None:
    documented = parse_signature(found.text)
    problems = compare(documented, real_signature(documented.name))
    assert not problems, f"{found.where}: {documented.name}: " + "; ".join(problems)


def test_the_pages_that_show_signatures_are_checked() -> None:
    # The signatures these pages show (the ones that drifted once) are found.
    names = {
        (found.where.split(":")[0], parse_signature(found.text).name) for found in _documented()
    }
    assert {
        ("docs/errors.md", "with_retry"),
        ("docs/observability.md", "Run"),
        ("docs/observability.md", "OpenTelemetry.hooks"),
        ("docs/state.md", "envelop"),
        ("docs/concurrency.md", "tee"),
        ("docs/concurrency.md", "broadcast"),
    } <= names


# --------------------------------------------------------------------------- the checker itself


def _problems(text: str) -> list[str]:
    documented = parse_signature(text)
    return compare(documented, real_signature(documented.name))


def test_a_right_signature_has_no_problems() -> None:
    assert (
        _problems(
            "with_retry(stage, /, *, attempts=3, backoff=exponential(), retry_on=Exception, "
            "deadline=None, timeout=None, on_error=None, dead_letter=None, report=None, name=None)"
        )
        == []
    )
    assert _problems("buffer(n, /, *, overflow='wait', ...)") == []
    assert _problems("tee(source, n=2, /, *, max_lag=64) -> tuple[Flow[T], ...]") == []
    assert _problems("OpenTelemetry.hooks(*, context=None)") == []
    assert _problems("streamkit.testing.check_stage(make_stage, items=..., *, ...)") == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # the default that docs/errors.md once gave
        (
            "with_retry(stage, /, *, attempts=3, backoff=exponential(), retry_on=Exception, "
            'deadline=None, timeout=None, on_error="fail", dead_letter=None, report=None)',
            "on_error defaults to None, documented as 'fail'",
        ),
        # the signature docs/observability.md once showed
        (
            "Run(pipeline, source, *, name=None, hooks=None, metrics=True, "
            'timing="sampled", state_history=None, version=None)',
            "leaves out checkpoint, every",
        ),
        ("buffer(n, *, overflow='wait', on_drop=None)", "n is positional-only"),
        ("buffer(n, /, overflow='wait', on_drop=None)", "overflow is keyword-only"),
        ("buffer(n, /, *, on_drop=None, overflow='wait')", "out of order"),
        ("buffer(n, /, *, size=1, ...)", "no parameter named size"),
        ("buffer(n=1, /, *, ...)", "n has no default"),
        ("tee(source, n, /, *, max_lag=64)", "n has a default, 2, not shown"),
        ("tee(source, n=2, /, *, max_lag=64) -> list[Flow]", "returns tuple[Flow[T], ...]"),
        ("buffer(n: str, /, *, ...)", "n is annotated int"),
        ("buffer(n, /, *, overflow=nowhere, ...)", "default nowhere fails"),
    ],
)
def test_a_wrong_signature_is_reported(text: str, problem: str) -> None:
    problems = _problems(text)
    assert any(problem in found for found in problems), problems


def test_an_unknown_name_is_reported() -> None:
    with pytest.raises(LookupError, match="not in streamkit"):
        real_signature("hooks")


def test_spans_that_are_calls_are_not_signatures() -> None:
    assert is_signature("buffer(n, /, *, overflow='wait')")
    assert is_signature("merge(*sources) -> Flow[T]")
    assert not is_signature("map_(fn, concurrency=4)")
    assert not is_signature("merge(*sources)")
    assert not is_signature("lambda s: merge(s, other)")
    assert not is_signature("hooks()")


def test_signatures_are_found_in_blocks_and_in_text(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Call `map_(fn, concurrency=4)`; the signature is `buffer(n, /, *,\n"
        "overflow='wait', on_drop=None)`.\n\n"
        f"{SIGNATURE}\n```python\nRun(pipeline, source,\n    *, name=None, ...)\n```\n\n"
        "```python\nprint(tee(source, n=2, *, max_lag=64))\n```\n",
        encoding="utf-8",
    )
    found = find_signatures(page)
    assert [(item.where.rsplit(":", 1)[1], " ".join(item.text.split())) for item in found] == [
        ("5", "Run(pipeline, source, *, name=None, ...)"),
        ("1", "buffer(n, /, *, overflow='wait', on_drop=None)"),
    ]
