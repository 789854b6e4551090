"""The ``streamkit`` command: run a pipeline over the lines of a file, read run histories.

``streamkit run MODULE:ATTR`` applies a `Stage` defined in a module (or a
``.py`` file) to the lines of a file or of standard input, writes the results
one per line, shows live progress on a terminal and the per-stage statistics
at the end; with ``--checkpoint DB`` it saves checkpoints in an `SQLiteStore`
and ``--resume`` continues after the last one; ``--dashboard`` serves a live
web page of the run. ``streamkit history DIR [RUN_ID]`` lists the runs of a
state-history directory, or shows one; ``--html FILE`` writes a run's report.

This is the top layer: nothing in streamkit imports it, and it is the only
module that uses rich (the ``cli`` extra). Exit codes: 0 done, 1 the pipeline
failed, 2 a usage error (one line on stderr, never a traceback), 130
interrupted (documented in docs/cli.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, cast

from ._core import is_stage
from ._dashboard import Dashboard
from ._hooks import Hooks
from ._metrics import RunStatistics, StageStatistics
from ._records import Envelope
from ._report import write_report
from ._resumable import lines
from ._run import Run
from ._store import CheckpointError, SQLiteStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator, Sequence
    from types import ModuleType

    from rich.console import Console
    from rich.table import Table

    from ._core import Source, Stage
    from ._writes import DeadLetterRecord

PROG: Final = "streamkit"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A run name, as `Run` accepts it."""
_DOTTED: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_RUN_ID: Final = re.compile(r"[0-9]{8}T[0-9]{12}Z(-[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?-[0-9a-f]{8}")
_REFRESH: Final = 0.25
"""Seconds between two refreshes of the live progress display (4 Hz)."""
_READ_SIZE: Final = 64 * 1024
_RECORDS_SHOWN: Final = 5
"""Error records shown per stage by ``history DIR RUN_ID``."""
_PLAIN_WIDTH: Final = 160
"""The width of tables written to a file or a pipe (a terminal uses its own)."""


class CommandError(Exception):
    """A usage error: one line on stderr, exit code 2.

    Args:
        message: What is wrong, on one line.
        cause: The exception behind it, shown by ``--traceback``.

    Examples:
        >>> str(CommandError("no such file: a.txt"))
        'no such file: a.txt'
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: ``streamkit: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``streamkit`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 done, 1 the pipeline failed, 2 a usage error, 130
        interrupted. ``--help`` and ``--version`` exit through `SystemExit`.

    Examples:
        >>> main(["history", "no/such/directory"])  # prints a one-line error on stderr
        2
    """
    args = _parser().parse_args(argv)
    show_traceback: bool = getattr(args, "traceback", False)
    try:
        if args.command == "run":
            return _run_command(args)
        if args.command == "dead-letters":
            return _dead_letters_command(args.database, args.name)
        return _history_command(args.directory, args.run_id, args.html)
    except CommandError as exc:
        if show_traceback and exc.cause is not None:
            traceback.print_exception(exc.cause)
        _print_error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _notice(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _version() -> str:
    import streamkit

    version = getattr(streamkit, "__version__", None)
    if isinstance(version, str):
        return version
    from importlib.metadata import version as installed_version

    return installed_version("streamkit")


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Run streamkit pipelines over the lines of a file, and read run histories.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run a pipeline over the lines of a file or of standard input",
        description=(
            "Apply a streamkit Stage to the lines of a file (without their newlines) and "
            "write its results, one per line: strings as they are, anything else as JSON. "
            "Exit codes: 0 done, 1 the pipeline failed, 2 usage error, 130 interrupted."
        ),
    )
    run.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a module importable from the current directory, or a .py file; and the name of "
        "a Stage in it (or of a function of no arguments that returns one)",
    )
    run.add_argument("--input", default="-", metavar="FILE", help="the input lines ('-': stdin)")
    run.add_argument("--output", default="-", metavar="FILE", help="the results ('-': stdout)")
    run.add_argument(
        "--name", help="the run's name (default: from MODULE:ATTR); checkpoints are kept by name"
    )
    run.add_argument("--state-history", metavar="DIR", help="write the run's history in DIR")
    run.add_argument(
        "--checkpoint", metavar="DB", help="save checkpoints in this SQLite file (needs --input)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue after the run's last checkpoint (without it, the checkpoint is deleted)",
    )
    run.add_argument(
        "--every",
        type=_positive,
        default=100,
        metavar="N",
        help="save a checkpoint every N items (default: 100)",
    )
    run.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve a live web page of the run while it runs, and print its URL (default: "
        "127.0.0.1, any free port; another interface needs the token the URL carries); "
        "put it after MODULE:ATTR, or write --dashboard=HOST:PORT",
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--metrics",
        choices=("table", "json"),
        default="table",
        help="the statistics printed on stderr at the end: a table (default) or JSON",
    )
    run.add_argument("--traceback", action="store_true", help="show the full traceback of errors")

    history = commands.add_parser(
        "history",
        help="list the runs of a state-history directory, or show one",
        description="List the runs recorded in DIR (Run's state_history), or show one of them.",
    )
    history.add_argument("directory", metavar="DIR", help="the state-history directory")
    history.add_argument(
        "run_id",
        metavar="RUN_ID",
        nargs="?",
        help="the run to show: its id, a unique start of it, or 'latest'",
    )
    history.add_argument(
        "--html",
        metavar="FILE",
        help="write the run's report to FILE: one HTML file with plots, that needs no network "
        "(the run given, or the latest)",
    )

    letters = commands.add_parser(
        "dead-letters",
        help="print the dead letters a checkpointed run saved, one JSON object per line",
        description=(
            "Print the dead letters that the checkpointed run NAME saved in the SQLite file "
            "DB (each bad item once, oldest first), one JSON object per line: name, stage, "
            "index, checkpoint, created_at and the error record (item, state, exception)."
        ),
    )
    letters.add_argument("database", metavar="DB", help="the run's checkpoint file (SQLite)")
    letters.add_argument("name", metavar="NAME", help="the run's name")
    return parser


# --------------------------------------------------------------------------- display


def _console() -> Console:
    """A rich console on stderr; `CommandError` if rich is not installed."""
    try:
        from rich.console import Console
    except ImportError as exc:
        raise CommandError(
            "the streamkit command needs rich, which is not installed: "
            "pip install 'streamkit[cli]'",
            exc,
        ) from None
    plain = not sys.stderr.isatty()
    return Console(
        stderr=True,
        markup=False,
        highlight=False,
        emoji=False,
        width=_PLAIN_WIDTH if plain else None,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _table(*columns: str, text: int = 2) -> Table:
    """A table with the given columns: ``text`` columns of text, then numbers."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for position, column in enumerate(columns):
        # On a narrow terminal the first column (stage keys, run ids) folds; the others stay.
        table.add_column(
            column,
            justify="left" if position < text else "right",
            no_wrap=position > 0,
            overflow="fold",
            min_width=16 if position == 0 else None,
        )
    return table


def _statistics_table(stages: Sequence[StageStatistics]) -> Table:
    table = _table(
        "stage", "status", "in", "out", "filtered", "errors", "retries", "p50", "p95", "items/s"
    )
    for stage in stages:
        table.add_row(
            stage.key,
            stage.status,
            f"{stage.items_in:,}",
            f"{stage.items_out:,}",
            f"{stage.filtered:,}",
            f"{stage.errors:,}",
            f"{stage.retries:,}",
            _duration(stage.time_p50),
            _duration(stage.time_p95),
            f"{stage.throughput:,.0f}",
        )
    return table


def _progress_table(stats: RunStatistics) -> Table:
    table = _table("stage", "status", "in", "out", "errors", "in flight", "items/s")
    table.title = (
        f"{stats.run_id}: {stats.status}, {stats.items_out:,} items out, {stats.wall_time:.1f} s"
    )
    for stage in stats.stages:
        table.add_row(
            stage.key,
            stage.status,
            f"{stage.items_in:,}",
            f"{stage.items_out:,}",
            f"{stage.errors:,}",
            f"{stage.in_flight:,}",
            f"{stage.throughput:,.0f}",
        )
    return table


class _Progress:
    """The live progress display: `_progress_table` redrawn on stderr at 4 Hz, then erased.

    It is refreshed by a task on the event loop, not by rich's thread, so the
    statistics are never read while the loop updates them.
    """

    def __init__(self, console: Console, run: Run[Any]) -> None:
        from rich.live import Live

        self.run = run
        self.live = Live(
            console=console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.live.start()
        self.task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            self.live.update(_progress_table(self.run.statistics()), refresh=True)
            await asyncio.sleep(_REFRESH)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.live.stop()


# --------------------------------------------------------------------------- loading a pipeline


def _load_target(target: str) -> tuple[Stage[Any, Any], str]:
    """The stage named by ``MODULE:ATTR``, and the default run name derived from it."""
    module_name, colon, attribute = target.rpartition(":")
    if not colon or not module_name or not _DOTTED.fullmatch(attribute):
        raise CommandError(
            f"expected MODULE:ATTR (a module or a .py file, a colon, a name), got {target!r}"
        )
    is_file = module_name.endswith(".py") or "/" in module_name or os.sep in module_name
    if is_file:
        module = _import_file(Path(module_name))
        base = Path(module_name).stem
    elif _DOTTED.fullmatch(module_name):
        module = _import_module(module_name)
        base = module_name
    else:
        raise CommandError(f"{module_name!r} is neither a module name nor a .py file")
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CommandError(f"module {module_name} has no attribute {attribute!r}") from None
    return _as_stage(found, target), _default_name(f"{base}.{attribute}")


def _import_module(name: str) -> ModuleType:
    # Like `python -m`: modules in the current directory come first.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(f"{missing}."):
            raise CommandError(
                f"no module named {name!r} (in the current directory or the installed packages)",
                exc,
            ) from None
        raise _import_error(name, exc) from None
    except (Exception, SystemExit) as exc:
        raise _import_error(name, exc) from None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    stem = path.stem
    name = stem if stem.isidentifier() and stem not in sys.modules else "_streamkit_pipeline"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Like `python file.py`: the file's directory comes first, for its own imports.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[name] = module  # dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise _import_error(str(path), exc) from None
    return module


def _import_error(name: str, exc: BaseException) -> CommandError:
    return CommandError(f"importing {name} raised {_describe(exc)}", exc)


def _as_stage(found: object, target: str) -> Stage[Any, Any]:
    if is_stage(found):
        return found
    if inspect.isfunction(found) or inspect.ismethod(found):
        try:
            inspect.signature(found).bind()
        except TypeError:
            raise CommandError(
                f"{target} is a function that takes arguments: name a Stage, "
                "or a function of no arguments that returns one"
            ) from None
        try:
            built: object = found()
        except Exception as exc:
            raise CommandError(f"{target}() raised {_describe(exc)}", exc) from None
        if is_stage(built):
            return built
        raise CommandError(f"{target}() returned {_a(built)}, not a streamkit Stage")
    raise CommandError(f"{target} is {_a(found)}, not a streamkit Stage")


def _a(value: object) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _default_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip("_.-")[:64]
    return name if _NAME.fullmatch(name) else "run"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _describe(exc: BaseException) -> str:
    """``Type: message``, and the first note streamkit added (the stage and item), if any."""
    message = str(exc)
    text = type(exc).__name__ + (f": {message}" if message else "")
    note = _streamkit_note(exc)
    return text if note is None else f"{text} ({note})"


def _streamkit_note(exc: BaseException) -> str | None:
    notes: list[str] = getattr(exc, "__notes__", [])
    for note in notes:
        if note.startswith("streamkit: "):
            return note.removeprefix("streamkit: ")
    return None


# --------------------------------------------------------------------------- run


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What ``streamkit run`` was asked to do, checked."""

    pipeline: Stage[Any, Any]
    name: str
    input: Path | None
    """None: standard input."""
    output: Path | None
    """None: standard output."""
    state_history: Path | None
    checkpoint: Path | None
    resume: bool
    every: int
    progress: bool
    metrics: str
    show_traceback: bool
    dashboard: Dashboard | None


def _run_command(args: argparse.Namespace) -> int:
    console = _console()
    input_name: str = args.input
    checkpoint: str | None = args.checkpoint
    if input_name == "-" and checkpoint is not None:
        raise CommandError("--checkpoint needs --input FILE: standard input cannot be resumed")
    if args.resume and checkpoint is None:
        raise CommandError("--resume needs --checkpoint DB")
    name: str | None = args.name
    if name is not None and not _NAME.fullmatch(name):
        raise CommandError(
            "--name must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
            f"or a digit, got {name!r}"
        )
    input_path = None if input_name == "-" else _readable(Path(input_name))
    if checkpoint is not None and (not checkpoint or Path(checkpoint).is_dir()):
        raise CommandError(f"--checkpoint must name a file, got {checkpoint!r}")
    history = None if args.state_history is None else _directory(Path(args.state_history))
    output_name: str = args.output
    dashboard = None if args.dashboard is None else _dashboard(args.dashboard)
    pipeline, default_name = _load_target(args.target)
    # A live display and results on the same terminal would overwrite each other.
    terminal_output = output_name == "-" and sys.stdout.isatty()
    plan = _Plan(
        pipeline=pipeline,
        name=default_name if name is None else name,
        input=input_path,
        output=None if output_name == "-" else Path(output_name),
        state_history=history,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        resume=args.resume,
        every=args.every,
        progress=not args.no_progress and console.is_terminal and not terminal_output,
        metrics=args.metrics,
        show_traceback=args.traceback,
        dashboard=dashboard,
    )
    return asyncio.run(_execute(plan, console))


def _dashboard(address: str) -> Dashboard:
    try:
        return Dashboard.parse(address)
    except ValueError as exc:
        raise CommandError(f"--dashboard: {exc}", exc) from None
    except ImportError as exc:
        raise CommandError(f"--dashboard: {exc}", exc) from None


def _readable(path: Path) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise CommandError(f"cannot read the input {path}: {exc.strerror}", exc) from None
    return path


def _directory(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise CommandError(f"cannot use {path} as the state history: {reason}", exc) from None
    return path


@contextlib.contextmanager
def _open_output(path: Path | None, *, append: bool) -> Generator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        file = path.open("a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write the output {path}: {exc.strerror}", exc) from None
    with file:
        yield file


def _format(item: object) -> str:
    """One output line: a string as it is, anything else as JSON; an envelope's value."""
    value: object = cast("Envelope[object]", item).value if isinstance(item, Envelope) else item
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return list(cast("set[object]", value))
    return str(value)


async def _stdin_lines(stream: IO[bytes]) -> AsyncIterator[str]:
    """The lines of ``stream``, without their newlines, read by a daemon thread.

    Not by the event loop's worker threads: a read blocked on a terminal or a
    pipe would hold up the end of the process (after Ctrl-C, say).
    """
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=4)
    read = getattr(stream, "read1", stream.read)

    def reader() -> None:
        while True:
            block: bytes | Exception
            try:
                block = read(_READ_SIZE)
            except Exception as exc:
                block = exc
            try:
                asyncio.run_coroutine_threadsafe(blocks.put(block), loop).result()
            except BaseException:  # the loop has ended: nobody reads any more
                return
            if not isinstance(block, bytes) or not block:
                return

    threading.Thread(target=reader, name="streamkit-stdin", daemon=True).start()
    pending = b""
    number = 0
    while True:
        block = await blocks.get()
        if isinstance(block, Exception):
            raise block
        complete = (pending + block).split(b"\n") if block else [pending]
        pending = complete.pop() if block else b""
        for raw in complete:
            number += 1
            if not block and not raw:
                return
            try:
                yield raw.removesuffix(b"\r").decode("utf-8")
            except UnicodeDecodeError as exc:
                exc.add_note(f"streamkit: in line {number} of the standard input")
                raise
        if not block:
            return


async def _execute(plan: _Plan, console: Console) -> int:
    async with contextlib.AsyncExitStack() as stack:
        store: SQLiteStore | None = None
        resuming = False
        if plan.checkpoint is not None:
            store = await stack.enter_async_context(SQLiteStore(plan.checkpoint))
            try:
                saved = await store.load(plan.name)
            except CheckpointError as exc:
                raise CommandError(str(exc), exc) from None
            if saved is not None and not plan.resume:
                await store.delete(plan.name)
                done = _count(saved.items, "input line")
                _notice(
                    f"run {plan.name} has a checkpoint after {done} in {plan.checkpoint}: "
                    "starting over (--resume continues it)"
                )
            elif saved is None and plan.resume:
                _notice(f"no checkpoint of run {plan.name} in {plan.checkpoint}: starting")
            resuming = saved is not None and plan.resume
        output = stack.enter_context(_open_output(plan.output, append=resuming))
        source: Source[str] = (
            _stdin_lines(sys.stdin.buffer) if plan.input is None else lines(plan.input)
        )
        notices = _Notices(console)
        try:
            run: Run[Any] = Run(
                plan.pipeline,
                source,
                name=plan.name,
                hooks=Hooks(on_run_start=notices.on_run_start),
                state_history=plan.state_history,
                checkpoint=store,
                every=plan.every,
                dashboard=plan.dashboard,
            )
        except (TypeError, ValueError) as exc:  # a pipeline checkpoints cannot follow
            await _close_source(source)
            raise CommandError(str(exc), exc) from None
        notices.run = run
        return await _consume(plan, console, run, output, flush=store is not None)


async def _close_source(source: Source[str]) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        await close()


class _Notices:
    """Says, when the run starts, which checkpoint it resumes from."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.run: Run[Any] | None = None

    def on_run_start(self, stats: RunStatistics) -> None:
        board = None if self.run is None else self.run.dashboard
        if board is not None:
            # The dashboard's own hook ran first: it serves now, or could not start.
            self.console.print(
                f"{PROG}: dashboard at {board.url} (while the run lasts)"
                if board.serving
                else f"{PROG}: warning: the dashboard could not start (see the end of the run)",
                soft_wrap=True,
            )
        resumed = None if self.run is None else self.run.resumed_from
        if resumed is not None:
            # Through rich's console: it keeps the live display below what it prints.
            self.console.print(
                f"{PROG}: resuming {resumed.name} after {_count(resumed.items, 'input line')}",
                soft_wrap=True,
            )


async def _consume(
    plan: _Plan, console: Console, run: Run[Any], output: IO[str], *, flush: bool
) -> int:
    progress = _Progress(console, run) if plan.progress else None
    error: Exception | None = None
    try:
        async with run:
            if progress is not None:
                progress.start()
            async for item in run:
                output.write(_format(item) + "\n")
                if flush:  # before the next checkpoint says this item is done
                    output.flush()
    except BrokenPipeError:
        # The reader of the output went away (`streamkit run ... | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except CheckpointError as exc:
        raise CommandError(str(exc), exc) from None
    except Exception as exc:
        error = exc
    except asyncio.CancelledError:
        _report(plan, console, run)
        raise
    finally:
        if progress is not None:
            await progress.stop()
        with contextlib.suppress(OSError):
            output.flush()
    _report(plan, console, run)
    if error is not None:
        if plan.show_traceback:
            traceback.print_exception(error)
        else:
            _print_error(f"the pipeline failed: {_describe_failure(run, error)}")
        return EXIT_FAILED
    return 0


def _describe_failure(run: Run[Any], error: Exception) -> str:
    described = _describe(error)
    if _streamkit_note(error) is not None:  # it names the stage and the item
        return described
    failed = [stage.key for stage in run.statistics().stages if stage.status == "failed"]
    return f"{described} (in {failed[0]})" if failed else described


def _report(plan: _Plan, console: Console, run: Run[Any]) -> None:
    """The statistics (a table or JSON, last) and where the history and checkpoint are."""
    stats = run.statistics()
    lines: list[str] = []
    if plan.metrics == "table":
        console.print(_statistics_table(stats.stages))
        lines.append(
            f"run {stats.run_id} {stats.status}: {_count(stats.items_out, 'item')} out "
            f"in {_duration(stats.wall_time)}"
        )
    if run.history_path is not None:
        lines.append(f"state history: {run.history_path}")
    checkpoint = run.last_checkpoint or run.resumed_from
    if checkpoint is not None and plan.checkpoint is not None:
        done = _count(checkpoint.items, "input line")
        line = f"checkpoint: {done} done, saved in {plan.checkpoint}"
        if stats.status != "succeeded":
            line += " (--resume continues from there)"
        lines.append(line)
    lines += [
        f"warning: {problem.hook} failed: {_describe(problem.exception)}"
        for problem in run.hook_errors
    ]
    for line in lines:
        console.print(line, soft_wrap=True)
    if plan.metrics == "json":
        print(stats.to_json(), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- history


def _dead_letters_command(database: str, name: str) -> int:
    """Print the dead letters of run ``name`` in the store at ``database``, as JSON lines."""
    if not os.path.isfile(database):
        raise CommandError(f"{database}: no such file")

    async def read() -> tuple[DeadLetterRecord, ...]:
        async with SQLiteStore(database) as store:
            return await store.dead_letters(name)

    try:
        letters = asyncio.run(read())
    except (CheckpointError, ValueError) as exc:
        raise CommandError(f"{database}: {exc}", exc) from None
    for letter in letters:
        line = {
            "name": letter.name,
            "stage": letter.stage,
            "index": letter.index,
            "checkpoint": letter.checkpoint,
            "created_at": letter.created_at.isoformat(),
            "record": letter.record,
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return EXIT_OK


def _history_command(directory: str, run_id: str | None, html: str | None = None) -> int:
    console = _console()
    root = Path(directory)
    if not root.is_dir():
        raise CommandError(f"no state-history directory {directory}")
    runs = sorted(
        (path for path in root.iterdir() if path.is_dir() and _is_run_folder(path)),
        key=lambda path: path.name,
    )
    if html is not None:
        if not runs:
            raise CommandError(f"no runs in {root}: no report to write")
        folder = _find_run(root, runs, "latest" if run_id is None else run_id)
        try:
            written = write_report(folder, html)
        except OSError as exc:
            raise CommandError(
                f"cannot write the report {html}: {exc.strerror or exc}", exc
            ) from None
        _notice(f"report of run {folder.name} written to {written}")
        return 0
    if run_id is None:
        _list_runs(console, root, runs)
    else:
        _show_run(console, _find_run(root, runs, run_id))
    return 0


def _is_run_folder(path: Path) -> bool:
    return _RUN_ID.fullmatch(path.name) is not None or (path / "run_start.json").is_file()


def _find_run(root: Path, runs: list[Path], run_id: str) -> Path:
    if run_id == "latest" and runs:  # a run id starts with a digit: no clash
        return runs[-1]
    exact = [path for path in runs if path.name == run_id]
    if exact:
        return exact[0]
    matches = [path for path in runs if path.name.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"{run_id!r} is the start of {len(matches)} run ids in {root}")
    raise CommandError(f"no run {run_id!r} in {root}")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The object in a JSON file; None if it is missing or is not a JSON object."""
    try:
        data: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cast("dict[str, Any]", data) if isinstance(data, dict) else None


def _when(started_at: object) -> str:
    if not isinstance(started_at, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))


def _list_runs(console: Console, root: Path, runs: list[Path]) -> None:
    if not runs:
        console.print(f"no runs in {root}")
        return
    table = _table("run", "name", "status", "items out", "wall time", "started", text=3)
    for folder in runs:
        start = _read_json(folder / "run_start.json") or {}
        final = _read_json(folder / "final.json")
        statistics: dict[str, Any] = {} if final is None else final.get("statistics") or {}
        wall_time = statistics.get("wall_time")
        items_out = statistics.get("items_out")
        table.add_row(
            folder.name,
            str(start.get("name") or "-"),
            "running or killed" if final is None else str(final.get("status", "?")),
            f"{items_out:,}" if isinstance(items_out, int) else "-",
            _duration(wall_time) if isinstance(wall_time, float) else "-",
            _when(start.get("started_at")),
        )
    console.print(table)


def _stage_statistics(entries: object) -> list[StageStatistics]:
    names = {field.name for field in dataclasses.fields(StageStatistics)}
    found: list[StageStatistics] = []
    for entry in cast("list[object]", entries) if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            given = cast("dict[str, Any]", entry)
            with contextlib.suppress(TypeError):
                found.append(StageStatistics(**{k: v for k, v in given.items() if k in names}))
    return found


def _exception_text(info: object) -> str:
    """An `ExceptionInfo.to_dict` form as ``Type: message (first streamkit note)``."""
    if not isinstance(info, dict):
        return "?"
    data = cast("dict[str, Any]", info)
    kind = str(data.get("type", "?")).removeprefix("builtins.")
    message = str(data.get("message", ""))
    text = kind + (f": {message}" if message else "")
    notes: object = data.get("notes")
    for note in cast("list[object]", notes) if isinstance(notes, list) else []:
        if isinstance(note, str) and note.startswith("streamkit: "):
            return f"{text} ({note.removeprefix('streamkit: ')})"
    return " ".join(text.split())


def _show_run(console: Console, folder: Path) -> None:
    start = _read_json(folder / "run_start.json") or {}
    final = _read_json(folder / "final.json")
    statistics: dict[str, Any] = {} if final is None else final.get("statistics") or {}
    status = "running or killed" if final is None else str(final.get("status", "?"))
    if final is not None and final.get("error") is not None:
        status += f": {_exception_text(final['error'])}"
    wall_time = statistics.get("wall_time")
    items_out = statistics.get("items_out")
    fields = [
        ("run", folder.name),
        ("name", str(start.get("name") or "-")),
        ("status", status),
        ("started", _when(start.get("started_at"))),
        ("wall time", _duration(wall_time) if isinstance(wall_time, float) else "-"),
        ("items out", f"{items_out:,}" if isinstance(items_out, int) else "-"),
        ("version", f"{start.get('version', '?')}, config hash {start.get('config_hash', '?')}"),
    ]
    for label, value in fields:
        console.print(f"{label:<10} {value}")
    stages = _stage_statistics(statistics.get("stages"))
    if stages:
        console.print()
        console.print(_statistics_table(stages))
    elif isinstance(start.get("stages"), list):
        console.print("\nstages (no statistics: the run did not end):")
        for entry in cast("list[object]", start["stages"]):
            if isinstance(entry, dict):
                stage = cast("dict[str, Any]", entry)
                console.print(f"  {stage.get('index', '?')}  {stage.get('key', '?')}")
    for path in sorted(folder.glob("stage_*_failures.json"), key=_stage_number):
        _show_failures(console, path)


def _stage_number(path: Path) -> int:
    digits = path.name.removeprefix("stage_").removesuffix("_failures.json")
    return int(digits) if digits.isdigit() else -1


def _show_failures(console: Console, path: Path) -> None:
    data = _read_json(path)
    if data is None:
        console.print(f"\n{path.name}: unreadable")
        return
    stage = data.get("stage", "?")
    records: object = data.get("records")
    listed = cast("list[object]", records) if isinstance(records, list) else []
    omitted = data.get("omitted", 0)
    total = len(listed) + (omitted if isinstance(omitted, int) else 0)
    console.print(f"\nfailures in stage {_stage_number(path)}, {stage}:")
    if data.get("fatal") is not None:
        console.print(f"  the run failed here: {_exception_text(data['fatal'])}")
    if total:
        console.print(f"  {total:,} failed items handled by the stage's guard")
    for record in listed[:_RECORDS_SHOWN]:
        if isinstance(record, dict):
            entry = cast("dict[str, Any]", record)
            console.print(
                f"  item {entry.get('index', '?')}: {entry.get('item')!r}: "
                f"{_exception_text(entry.get('exception'))}, "
                f"{entry.get('attempts', '?')} attempts"
            )
    if total > _RECORDS_SHOWN:
        console.print(f"  ... and {total - _RECORDS_SHOWN:,} more in {path}")
