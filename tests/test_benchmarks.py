"""Structural checks of the benchmark harness (benchmarks/). No timing assertions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest

from benchmarks import CASES, CaseResult, Settings, render_markdown, run_cases
from benchmarks.cases_concurrency import ideal_makespan
from benchmarks.cases_state import CHAIN, MICRO_STATE_SIZES, STATE_SIZES
from benchmarks.cli import main
from benchmarks.compiled import available as compiled_available
from benchmarks.harness import TIMING_HEADERS
from benchmarks.report import NOTES_END, NOTES_START, extract_notes, read_notes, write_doc

if TYPE_CHECKING:
    from pathlib import Path

TINY = Settings(quick=True, repeat=1)

#: The rows that cases (f) and (h) add when the compiled envelope is built.
COMPILED_ROWS = {
    "f": {"compiled_streamkit_plain", "compiled_streamkit_envelope"},
    "h": {"compiled_streamkit_reduce_drain", "compiled_list_collect"},
}
EXPECTED_ROWS = {
    "a": {"streamkit", "handwritten", "aiostream", "asyncstdlib", "aioitertools"},
    "b": {"streamkit", "sync_loop", "handwritten"},
    "c": {
        "streamkit_ordered",
        "deque",
        "aiostream_ordered",
        "streamkit_unordered",
        "wait",
        "aiostream_unordered",
    },
    "d": {"ideal", "streamkit", "streamkit_window", "aiostream", "semaphore", "deque"},
    "e": {"streamkit_drain", "streamkit_collect", "handwritten_drain", "handwritten_collect"},
    "f": {
        "streamkit_plain",
        "streamkit_envelope",
        "streamkit_envelop_unwrap",
        "plain_source",
        "streamkit_envelope_source",
    },
    "g": {
        *(
            f"streamkit_{kind}_{keys}{size}"
            for kind in ("envelop", "set_state")
            for keys in STATE_SIZES
            for size in ("", "_large")
        ),
        *(
            f"streamkit_{kind}_{keys}"
            for kind in ("state_set", "chain")
            for keys in MICRO_STATE_SIZES
        ),
    },
    "h": {
        "streamkit_reduce_drain",
        "streamkit_reduce_collect",
        "list_collect",
        "streamkit_envelop_collect",
        "streamkit_envelop_drain",
    },
    "i": {"streamkit_spill", "streamkit_buffer"},
    "j": {
        f"{consumer}_{mode}"
        for consumer in ("async_for", "collect", "drain")
        for mode in ("bare", "disabled", "enabled", "full")
    },
    "k": {"plain", "sqlite_1000", "sqlite_10000", "sqlite_thread_1000", "memory_1000"},
    "p": {"streamkit", "streamkit_filter_alone", "handwritten"},
    "q": {"streamkit_before", "streamkit_peak"},
    "m": {"streamkit", "queue", "wait", "aiostream"},
    "l": {
        "construct",
        "save_memory",
        "save_sqlite",
        "run_barrier",
        "run_final_only",
        "run_difference",
    },
    "w": {"streamkit", "bytewax", "memory_small", "memory_large"},
    "y": {"streamkit", "scan_by", "handwritten"},
    "r": {"list", "redis_1", "processes_1", "processes_3"},
    "s": {"list", "kafka_1", "processes_1", "processes_3"},
}
MEASURED_ONLY = {"l", "r", "s"}
"""Cases that report figures without a target."""
STREAMKIT_ONLY = {"k", "l", "r", "s"}
"""Cases whose every row measures streamkit (whatever its key)."""


@pytest.fixture(scope="module")
def results() -> dict[str, CaseResult]:
    return {result.key: result for result in run_cases(settings=TINY)}


def test_every_registered_case_is_expected() -> None:
    assert set(CASES) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("key", sorted(EXPECTED_ROWS))
def test_case_has_a_row_per_competitor(results: dict[str, CaseResult], key: str) -> None:
    result = results[key]
    expected = EXPECTED_ROWS[key]
    if compiled_available():  # the compiled envelope is built: its rows too
        expected = expected | COMPILED_ROWS.get(key, set())
    assert {row.key for row in result.rows} == expected
    for row in result.rows:
        assert len(row.cells) == len(result.headers) - 1
        if row.key.startswith("streamkit") or key in STREAMKIT_ONLY:
            # streamkit may lack a feature while it is being written, but must not fail.
            assert not row.note or row.note.startswith("n/a: "), row.note
        else:
            assert not row.note, row.note


@pytest.mark.parametrize("key", sorted(set(EXPECTED_ROWS) - MEASURED_ONLY))
def test_ratios_are_positive_and_finite(results: dict[str, CaseResult], key: str) -> None:
    result = results[key]
    streamkit_measured = all(not r.note for r in result.rows if r.key.startswith("streamkit"))
    for row in result.rows:
        if row.ratio is None:
            assert row.note or not streamkit_measured, f"{row.key} has no ratio"
        else:
            assert math.isfinite(row.ratio)
            assert row.ratio > 0


@pytest.mark.parametrize("key", sorted(EXPECTED_ROWS))
def test_every_target_gets_a_verdict(results: dict[str, CaseResult], key: str) -> None:
    result = results[key]
    assert len(result.verdicts) == len(CASES[key].targets)
    assert bool(result.verdicts) != (key in MEASURED_ONLY)
    for verdict in result.verdicts:
        assert verdict.status in {"met", "NOT met", "not evaluated"}
        assert (verdict.value is None) == (verdict.met is None)
        if verdict.value is not None:
            assert math.isfinite(verdict.value)


def _table_header(markdown: str, first_cell: str) -> list[str]:
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_cell} "):
            assert set(lines[i + 1]) <= set("|:-"), "header is not followed by a rule"
            return [cell.strip() for cell in line.strip("|").split(" | ")]
    raise AssertionError(f"no table starting with {first_cell!r}")


def test_markdown_has_a_section_and_table_per_case(results: dict[str, CaseResult]) -> None:
    markdown = render_markdown(list(results.values()), TINY, notes="kept by hand")
    for key, result in results.items():
        assert f"## ({key}) {result.title}" in markdown
    assert _table_header(markdown, "competitor") == [h.replace("|", r"\|") for h in TIMING_HEADERS]
    assert _table_header(markdown, "mode")[:3] == ["mode", "peak, N = 1,000", "peak, N = 10,000"]
    assert _table_header(markdown, "case") == ["case", "target", "result", "measured"]
    for heading in ("## Environment", "## Targets", "## Notes", "Python", "aiostream"):
        assert heading in markdown
    assert extract_notes(markdown) == "kept by hand"


def test_regenerating_keeps_the_notes(results: dict[str, CaseResult], tmp_path: Path) -> None:
    path = tmp_path / "performance.md"
    assert read_notes(path) is None
    write_doc(render_markdown([results["e"]], TINY, notes=None), path)
    default = read_notes(path)
    assert default
    notes = "Hand-written.\n\nTwo paragraphs, a | pipe and a [link](https://example.org)."
    path.write_text(path.read_text().replace(default, notes))
    write_doc(render_markdown([results["e"]], TINY, notes=read_notes(path)), path)
    text = path.read_text()
    assert read_notes(path) == notes
    assert text.count(NOTES_START) == text.count(NOTES_END) == 1


def _measured(result: CaseResult, key: str, value: str) -> float:
    row = result.row(key)
    assert row is not None, key
    if row.note:  # streamkit may lack the feature while it is being written
        assert row.note.startswith("n/a: "), row.note
        pytest.skip(f"{key}: {row.note}")
    return row.values[value]


def test_envelope_case_compares_every_row_with_plain_mode(
    results: dict[str, CaseResult],
) -> None:
    result = results["f"]
    plain = _measured(result, "streamkit_plain", "median_ms")
    for row in result.rows:
        if not row.note:
            # The compiled envelope's rows (when it is built) have their own plain row.
            own = "compiled_streamkit_plain" if row.key.startswith("compiled_") else None
            reference = plain if own is None else _measured(result, own, "median_ms")
            assert row.ratio == pytest.approx(row.values["median_ms"] / reference)
    assert result.ratio("streamkit_plain") == pytest.approx(1.0)
    (verdict,) = result.verdicts
    assert verdict.value == result.ratio("streamkit_envelope")
    assert any("`envelop()` and `unwrap()`" in note for note in result.footnotes)


def test_set_state_case_reports_own_cost_per_state_size_and_n(
    results: dict[str, CaseResult],
) -> None:
    result = results["g"]
    headers = result.headers
    assert headers[:2] == ("variant", "N")
    for keys in STATE_SIZES:
        for suffix in ("", "_large"):
            step = _measured(result, f"streamkit_set_state_{keys}{suffix}", "ns_per_item")
            base = _measured(result, f"streamkit_envelop_{keys}{suffix}", "ns_per_item")
            own = _measured(result, f"streamkit_set_state_{keys}{suffix}", "own_ns")
            assert own == pytest.approx(step - base)
    sizes = {row.cells[0] for row in result.rows if row.key.startswith("streamkit_envelop_")}
    assert len(sizes) == 2, "two sizes of N"
    chain = _measured(result, f"streamkit_chain_{MICRO_STATE_SIZES[0]}", "own_ns")
    assert chain > 0
    assert CHAIN > 8  # one more set than the depth at which a state chain is flattened
    assert len(result.verdicts) == 3


def test_reduction_case_target_is_drained_reduce_point_over_a_list(
    results: dict[str, CaseResult],
) -> None:
    result = results["h"]
    reduce = _measured(result, "streamkit_reduce_drain", "median_ms")
    listed = _measured(result, "list_collect", "median_ms")
    (verdict,) = result.verdicts
    assert verdict.value == pytest.approx(reduce / listed)
    assert result.ratio("list_collect") == pytest.approx(1.0)


def test_spilling_case_reports_both_peaks_of_both_modes(results: dict[str, CaseResult]) -> None:
    result = results["i"]
    for key in ("streamkit_spill", "streamkit_buffer"):
        for size in ("peak_small_bytes", "peak_large_bytes"):
            assert _measured(result, key, size) > 0
    flat, below = result.verdicts
    spill_large = _measured(result, "streamkit_spill", "peak_large_bytes")
    assert flat.value == pytest.approx(
        spill_large / _measured(result, "streamkit_spill", "peak_small_bytes")
    )
    assert below.value == pytest.approx(
        spill_large / _measured(result, "streamkit_buffer", "peak_large_bytes")
    )


def test_checkpointed_run_case_compares_with_the_run_without_a_checkpoint(
    results: dict[str, CaseResult],
) -> None:
    result = results["k"]
    plain = _measured(result, "plain", "median_ms")
    assert result.ratio("plain") == pytest.approx(1.0)
    for key in ("sqlite_1000", "sqlite_10000", "sqlite_thread_1000", "memory_1000"):
        median = _measured(result, key, "median_ms")
        n = _measured(result, key, "n")
        assert result.ratio(key) == pytest.approx(median / plain)
        extra = _measured(result, key, "extra_us_per_item")
        assert extra == pytest.approx((median - plain) * 1e3 / n)
    (verdict,) = result.verdicts
    assert verdict.value == result.ratio("sqlite_1000")


def test_large_checkpoint_case_reports_each_step_and_the_difference_in_a_run(
    results: dict[str, CaseResult],
) -> None:
    result = results["l"]
    assert result.verdicts == ()
    assert all(row.ratio is None for row in result.rows)
    for key in ("construct", "save_memory", "save_sqlite", "run_barrier", "run_final_only"):
        median = _measured(result, key, "median_ms")
        assert median > 0
        assert _measured(result, key, "runs") == TINY.repeat
        keys = _measured(result, key, "keys")
        measured = result.row(key)
        assert measured is not None
        assert float(measured.cells[2]) == pytest.approx(median * 1e3 / keys, abs=0.01)
    difference = _measured(result, "run_difference", "median_ms")
    assert difference == pytest.approx(
        _measured(result, "run_barrier", "median_ms")
        - _measured(result, "run_final_only", "median_ms")
    )


def test_ideal_schedule_is_greedy_list_scheduling() -> None:
    assert ideal_makespan([1.0] * 16, 8) == 2.0
    assert ideal_makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    # A straggler first: the other slot takes every fast item meanwhile.
    assert ideal_makespan([20.0] + [1.0] * 30, 2) == 25.0
    assert ideal_makespan([], 8) == 0.0


def test_quick_cli_prints_and_does_not_write(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("--quick must not rewrite the doc")

    monkeypatch.setattr("benchmarks.cli.write_doc", refuse)
    assert main(["--quick", "--cases", "e"]) == 0
    out = capsys.readouterr().out
    assert "(e) peak memory" in out
    assert "not rewritten" in out


def test_cli_rejects_unknown_cases() -> None:
    with pytest.raises(SystemExit):
        main(["--cases", "a,zz", "--no-write"])
