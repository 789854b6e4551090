"""Static checks for the dashboard and the report (mypy --strict and pyright strict).

Nothing here runs: pytest does not collect this file and the functions are
never called. ``assert_type`` fails the type checkers when a type drifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import assert_type

from streamkit import Dashboard, Run, map_, write_report


def double(value: int) -> int:
    return 2 * value


def dashboards() -> None:
    board = Dashboard(host="0.0.0.0", port=8765, token="a" * 16, rate=10)
    assert_type(board.host, str)
    assert_type(board.port, int)
    assert_type(board.token, str | None)
    assert_type(board.rate, float)
    assert_type(board.url, str | None)
    assert_type(board.serving, bool)
    assert_type(Dashboard.parse("127.0.0.1:0"), Dashboard)
    for given in (board, "127.0.0.1:0", True, None):
        run = Run(map_(double), [1, 2], dashboard=given)
        assert_type(run.dashboard, Dashboard | None)
    Dashboard(port="80")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Run(map_(double), [1], dashboard=8765)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def reports(folder: Path) -> None:
    assert_type(write_report(folder, folder / "report.html"), Path)
    assert_type(write_report("runs/x", "report.html"), Path)
