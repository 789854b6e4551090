"""render: ${path} templates over a state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit._records import Key, Scope, State
from streamkit._template import TemplatePathError, render


@dataclass
class User:
    name: str
    _secret: str = "hidden"


STATE = State(
    {
        "count": 3,
        "user": {"name": "ada", "tags": ["x", "y"]},
        "person": User("grace"),
        "dotted.key": "d",
        Key[int]("count", scope=Scope.stage("dedupe")): 7,
    }
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${count}", "3"),
        ("${user.name} has ${count}", "ada has 3"),
        ("${user.tags.1}", "y"),
        ("${person.name}", "grace"),
        ("${dotted.key}", "d"),
        ("${stage:dedupe/count}", "7"),
        ("${ count }", "3"),
        ("no placeholders, $5 and {braces}", "no placeholders, $5 and {braces}"),
        ("$${count} is literal", "${count} is literal"),
        ("$$${count}", "$${count}"),  # "$${" is a literal "${" wherever it is
        ("${user}", "{'name': 'ada', 'tags': ['x', 'y']}"),
        ("", ""),
    ],
)
def test_render(template: str, expected: str) -> None:
    assert render(template, STATE) == expected


def test_render_accepts_any_mapping() -> None:
    assert render("${a.b}", {"a": {"b": 1}}) == "1"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${missing}", "cannot render ${missing}: no state key 'missing' (keys present: ['count'"),
        ("${user.age}", "cannot render ${user.age}: 'user' has no item or public attribute 'age'"),
        ("${user.tags.5}", "'user.tags' has no item or public attribute '5'"),
        ("${person._secret}", "'person' has no item or public attribute '_secret'"),
        ("${person.__class__}", "has no item or public attribute '__class__'"),
        ("${}", "empty part in the path"),
        ("${user..name}", "empty part in the path"),
    ],
)
def test_missing_paths_raise_a_key_error_naming_the_path(template: str, message: str) -> None:
    with pytest.raises(KeyError) as raised:
        render(template, STATE)
    assert isinstance(raised.value, TemplatePathError)
    assert message in str(raised.value)
    assert raised.value.path in template


def test_nothing_is_evaluated() -> None:
    with pytest.raises(KeyError):
        render("${__import__('os').getcwd()}", STATE)
    with pytest.raises(KeyError):
        render("${count + 1}", STATE)


def test_unterminated_placeholder_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unterminated placeholder at position 4"):
        render("abc ${count", STATE)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="template must be a str"):
        render(3, STATE)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be a State or a mapping"):
        render("x", [1])  # type: ignore[arg-type]


@given(st.text(alphabet="ab ${}.", max_size=30))
def test_escaped_text_renders_to_itself(text: str) -> None:
    escaped = text.replace("${", "$${")
    rendered: Any = None
    try:
        rendered = render(escaped, {})
    except ValueError:
        # "$${" then "{" ... only an unterminated placeholder can fail here.
        return
    assert rendered == text
