"""The examples run, end to end, at a small size, and report what their seeds make them find.

Each example runs in a subprocess with ``-W error``, as a reader would run it (``python -m
examples.<name>``). The numbers asserted are the deterministic ones (the generated log and site
are seeded); timings are not asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", f"examples.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def section(output: str, heading: str) -> list[str]:
    """The lines after the one starting with ``heading``, up to the next blank line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1 : end]


def statistics(output: str, columns: int) -> dict[str, list[str]]:
    """The run statistics table: each stage's ``columns`` numbers, by the stage's key.

    The key (which may hold spaces) comes first in the log example's table, last in the
    crawler's.
    """
    table: dict[str, list[str]] = {}
    for line in section(output, "run statistics (succeeded")[1:]:
        row = line.split()
        if row[0][0].isdigit():
            table[" ".join(row[columns:])] = row[:columns]
        else:
            table[" ".join(row[:-columns])] = row[-columns:]
    return table


def test_log_analytics_flags_the_seeded_incidents() -> None:
    output = run_example("log_analytics", "--lines", "20000")
    assert "generated 20,000 lines" in output
    assert "analysed 2,218,483 bytes" in output  # the whole file, as source.position() says
    assert "19,999 requests, 167 windows, 1 bad lines" in output
    assert "5xx rate per window: mean 1.83%, sd 6.48%, flagged above 21.27%" in output
    incidents = section(output, "3 flagged windows in 3 incidents:")
    assert [row.split()[:4] for row in incidents[1:]] == [
        ["2026-11-16", "00:35", "00:35", "1"],
        ["2026-11-16", "01:35", "01:35", "1"],
        ["2026-11-16", "02:18", "02:18", "1"],
    ]
    stages = {key.split("(")[0]: row for key, row in statistics(output, 5).items()}
    assert list(stages) == ["map_", "filter_", "minute_windows", "reduce_point", "set_state"]
    # in, out, filtered
    assert stages["map_"][:3] == ["20,000", "20,000", "0"]
    assert stages["filter_"][:3] == ["20,000", "19,999", "1"]
    assert stages["minute_windows"][:3] == ["19,999", "167", "0"]
    assert stages["reduce_point"][:3] == ["167", "167", "0"]
    assert "reduce_point('5xx rate moments', add_rate)" in statistics(output, 5)


def test_crawler_stops_at_the_page_limit() -> None:
    output = run_example("crawler", "--pages", "30")
    assert "serving 300 pages (10 slow, 12 flaky) at http://127.0.0.1:" in output
    assert "followed 30 links in" in output
    assert "to depth 3:" in output
    assert "  27 pages, 3 broken, 2 off-site links skipped" in output
    broken = section(output, "broken links (dead letters)")
    assert [line.split() for line in broken] == [
        ["/gone/10", "HTTP", "404", "from", "/p/0"],
        ["/gone/3", "HTTP", "404", "from", "/p/1"],
        ["/gone/5", "HTTP", "404", "from", "/p/202"],
    ]
    assert len(section(output, "slowest pages:")) == 5
    stages = statistics(output, 7)
    assert [key.split("(")[0] for key in stages] == ["throttle", "with_retry", "tap"]
    assert stages["throttle(50, 1)"][:2] == ["30", "30"]
    fetch = next(row for key, row in stages.items() if key.startswith("with_retry"))
    # in, out, errors, retries (the flaky pages' 503s), dead letters (the 404s)
    assert fetch[:5] == ["30", "27", "3", "2", "3"]


def test_crawler_stops_by_itself_when_the_site_is_crawled() -> None:
    output = run_example("crawler")  # at most 500 links: more than the site has
    assert "followed 312 links in" in output
    assert "to depth 7:" in output
    assert "  300 pages, 12 broken, 33 off-site links skipped" in output
    assert len(section(output, "broken links (dead letters)")) == 12
    fetch = next(row for key, row in statistics(output, 7).items() if key.startswith("with_retry"))
    assert fetch[:5] == ["312", "300", "12", "12", "12"]


def test_log_analytics_reports_an_empty_log() -> None:
    output = run_example("log_analytics", "--lines", "0")
    assert "0 requests, 0 windows" in output
    assert "0 flagged windows in 0 incidents" in output
