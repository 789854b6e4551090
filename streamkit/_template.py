"""``${path}`` templates rendered from a state, without eval."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

_TOKEN: Final = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
"""An escaped ``$${``, a placeholder ``${path}``, or an unterminated ``${``."""

_MISSING: Final = object()


class TemplatePathError(KeyError):
    """A placeholder's path does not resolve; a `KeyError` naming the path.

    Attributes:
        path: The placeholder's path (``user.name``).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot render ${{{self.path}}}: {self.reason}"


def _step(value: Any, part: str) -> Any:
    """``value``'s item or attribute ``part`` (public attributes only), or `_MISSING`."""
    if isinstance(value, Mapping):
        mapping = cast("Mapping[object, object]", value)
        return mapping.get(part, _MISSING)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and part.isdigit():
        sequence = cast("Sequence[object]", value)
        position = int(part)
        return sequence[position] if position < len(sequence) else _MISSING
    if part.startswith("_"):
        return _MISSING
    return getattr(cast("object", value), part, _MISSING)


def resolve(path: str, state: Mapping[str, Any]) -> Any:
    """The value at a dotted ``path``: a state key, then items or attributes of its value.

    The state key is the longest dotted prefix of the path present in the
    state (so keys may contain dots), and each further part is a mapping key,
    a sequence index or a public attribute (never one starting with ``_``).

    Raises:
        TemplatePathError: Some part of the path is missing.
    """
    parts = [part.strip() for part in path.split(".")]
    if not all(parts):
        raise TemplatePathError(path, "empty part in the path")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in state:
            value = state[name]
            break
    else:
        present = ", ".join(repr(key) for key in list(state)[:20])
        raise TemplatePathError(path, f"no state key {parts[0]!r} (keys present: [{present}])")
    walked = name
    for part in parts[cut:]:
        value = _step(value, part)
        if value is _MISSING:
            raise TemplatePathError(path, f"{walked!r} has no item or public attribute {part!r}")
        walked = f"{walked}.{part}"
    return value


def render(template: str, state: Mapping[str, Any], /) -> str:
    """Substitute every ``${path}`` in ``template`` with the value in ``state``.

    A path is a state key followed by dotted item names, indexes or public
    attributes: ``${user.name}``, ``${rows.0}``, ``${stage:dedupe/count}``.
    Values are formatted with `str`. ``$${`` stands for a literal ``${``.
    Nothing is evaluated: paths are looked up, never executed.

    Args:
        template: The text with placeholders.
        state: A `State` (or any mapping) to read the values from.

    Raises:
        TemplatePathError: A path does not resolve (a `KeyError` naming it).
        ValueError: A ``${`` has no closing ``}``.

    Examples:
        >>> render("${user.name} has ${count} items ($${literal})", {
        ...     "user": {"name": "ada"}, "count": 3})
        'ada has 3 items (${literal})'
    """
    if not isinstance(template, str):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if not isinstance(state, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance] - untyped callers
        raise TypeError(f"state must be a State or a mapping, got {type(state).__name__}")

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        path = match.group(1)
        if path is None:
            raise ValueError(f"unterminated placeholder at position {match.start()}: {template!r}")
        return str(resolve(path, state))

    return _TOKEN.sub(substitute, template)
