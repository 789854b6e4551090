"""A run's folder in the state history: the files written when it starts and ends.

``Run(state_history=root)`` keeps ``root/<run id>/``: ``run_start.json`` when
the run starts, ``stage_<n>_failures.json`` for each step that recorded errors
and ``final.json`` when it ends (the feed adds ``timeline.jsonl`` while it
runs). Every file is written atomically, off the event loop; a write that
fails is reported, never raised into the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any, Final

from ._failures import ErrorRecord, ExceptionInfo
from ._runtime import in_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from ._barrier import Encoder
    from ._metrics import RunStatistics

FAILURE_RECORDS_CAP: Final = 100
"""The most error records written per step."""


class History:
    """Writes one run's history folder.

    Args:
        path: The run's folder (created on the first write).
        report: Called with ``"state_history"`` and the error of a write
            that fails (the run lists it in `Run.hook_errors`).
    """

    __slots__ = ("_report", "path")

    def __init__(self, path: Path, report: Callable[[str, Exception], None]) -> None:
        self.path = path
        self._report = report

    async def started(self, stats: RunStatistics) -> None:
        """Write ``run_start.json``: the run's identity and its steps."""
        start = {
            "id": stats.run_id,
            "name": stats.name,
            "version": stats.version,
            "config_hash": stats.config_hash,
            "started_at": stats.started_at,
            "stages": [
                {"index": n, "key": stage.key, "label": stage.label, "kind": stage.kind}
                for n, stage in enumerate(stats.stages)
            ],
        }
        await self._write([("run_start.json", start)])

    async def ended(
        self,
        stats: RunStatistics,
        error: BaseException | None,
        failures: Sequence[tuple[Sequence[ErrorRecord[Any]], BaseException | None]],
        codec: Encoder,
    ) -> None:
        """Write the failures of each step and ``final.json``.

        Args:
            stats: The run's final statistics.
            error: What ended the run, if anything.
            failures: Per step, in order: the error records it made during
                the run, and the error that failed the run if it raised it.
            codec: Encodes the records' items and states (so they can be replayed).
        """
        files: list[tuple[str, Any]] = []
        for index, ((records, fatal), stage) in enumerate(zip(failures, stats.stages, strict=True)):
            if not records and fatal is None:
                continue
            kept = records[:FAILURE_RECORDS_CAP]
            files.append(
                (
                    f"stage_{index}_failures.json",
                    {
                        "stage": stage.key,
                        "records": [record.to_encoded(codec=codec) for record in kept],
                        "omitted": len(records) - len(kept),
                        "fatal": None
                        if fatal is None
                        else ExceptionInfo.from_exception(fatal).to_dict(),
                    },
                )
            )
        failed = None if stats.status != "failed" else error
        final = {
            "status": stats.status,
            "error": None if failed is None else ExceptionInfo.from_exception(failed).to_dict(),
            "statistics": stats.to_dict(),
        }
        files.append(("final.json", final))
        await self._write(files)

    async def _write(self, files: list[tuple[str, Any]]) -> None:
        try:
            await in_thread(_write_files, self.path, files)
        except Exception as exc:
            self._report("state_history", exc)


def _write_files(directory: Path, files: list[tuple[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        _write_atomically(directory / name, json.dumps(data, indent=2, default=repr) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
