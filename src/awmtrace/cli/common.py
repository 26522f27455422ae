"""What every subcommand shares: exit codes, the two streams, error handling, output files, JSON with an audit trail.

Streams: results (tables, JSON) go to stdout; everything else (notes,
progress, "written to", errors) goes to stderr, so ``awm ... > result``
captures only the result. Exit codes are the ``EXIT_*`` constants below,
documented in every ``--help`` epilog and in the README.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from awmtrace.cli.progress import NO_PROGRESS_ENV, progress_reporter
from awmtrace.errors import AwmError, first_line
from awmtrace.report.schema import SCHEMA_VERSION, finite_json

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FLAGGED = 1  # --fail-on matched a verdict
EXIT_USAGE = 2  # bad command line or contradictory options (click's own code for usage errors)
EXIT_INPUT = 3  # an input could not be read or used (missing, corrupt, unsupported, too large for memory)
EXIT_OUTPUT = 4  # a result was computed (and printed) but a file could not be written
EXIT_INCOMPLETE = 5  # some pairs (or Hub ids) have no result; the others were stored
EXIT_INTERNAL = 70  # an unexpected error inside awmtrace (sysexits' EX_SOFTWARE): a bug, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

EXIT_CODES_HELP = """\b
Exit codes:
  0    ok
  1    --fail-on matched the verdict
  2    usage error
  3    bad input (missing, corrupt or unsupported model, Hub error, ...)
  4    an output file was not written (the result is still printed)
  5    incomplete: some pairs (or Hub ids) have no result
  70   internal error: run again with -v for the traceback, and report it
  130  interrupted"""


def epilog(*examples: str) -> str:
    """A ``--help`` epilog: examples (one per line, kept as written) and the exit codes."""
    lines = ["\b", "Examples:", *(f"  {e}" for e in examples)] if examples else []
    return "\n".join(lines) + "\n\n" + EXIT_CODES_HELP


class _ConsoleRef:
    """A rich Console made on first use in each invocation, so NO_COLOR and COLUMNS are read when the command runs."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=self._stderr, highlight=False)
        return self._console

    def reset(self) -> None:
        self._console = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console: Any = _ConsoleRef(stderr=False)  # results
err_console: Any = _ConsoleRef(stderr=True)  # everything else


@dataclass
class _Invocation:
    """State of one ``awm`` invocation (reset by the group callback)."""

    verbose: int = 0
    output_failed: bool = False
    inputs: list[dict[str, Any]] = field(default_factory=list)
    notes_shown: set[str] = field(default_factory=set)
    started: str = ""


state = _Invocation()


def reset_state(verbose: int) -> None:
    global state
    state = _Invocation(verbose=verbose, started=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    console.reset()
    err_console.reset()


def escape(text: str) -> str:
    """Escape rich markup in text that came from files or users."""
    from rich.markup import escape as _escape

    return _escape(text)


def note(text: str, style: str = "dim") -> None:
    """A note on stderr, shown once per invocation however many times it is raised."""
    if text in state.notes_shown:
        return
    state.notes_shown.add(text)
    err_console.print(f"[{style}]note: {escape(text)}[/]", soft_wrap=True)


def info(text: str) -> None:
    """A line for the person at the terminal (stderr): what was written where, what happens next."""
    err_console.print(f"[dim]{escape(text)}[/]", soft_wrap=True)


def table(**kwargs: Any) -> Any:
    """A rich table in the house style: no vertical rules, and cells that wrap instead of being cut."""
    from rich import box
    from rich.table import Table

    kwargs.setdefault("box", box.SIMPLE_HEAD)
    kwargs.setdefault("pad_edge", False)
    kwargs.setdefault("title_justify", "left")
    return Table(**kwargs)


def add_columns(t: Any, *columns: str, right: tuple[str, ...] = (), fold: tuple[str, ...] = (), cells: Any = None) -> None:
    """Add columns to ``t``: ``right`` ones right-justified and never wrapped; the others wrap, never cut.

    ``fold`` columns hold names and paths: with ``cells`` (the rows to come,
    as lists of strings) each gets a minimum width of its longest entry (at
    most 44), so names stay whole where the terminal allows and fold
    (continue on the next line) only beyond that.
    """
    rows = [list(r) for r in cells] if cells is not None else []
    for i, col in enumerate(columns):
        longest = max((len(str(r[i])) for r in rows if i < len(r)), default=0)
        t.add_column(
            col,
            justify="right" if col in right else "left",
            overflow="fold",
            no_wrap=col in right,
            min_width=min(max(longest, len(col)), 44) if col in fold and rows else None,
        )


def _input_label() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    values: list[str] = []
    for param in ctx.command.params:
        if isinstance(param, click.Argument):
            v = ctx.params.get(param.name or "")
            values.extend(str(x) for x in (v if isinstance(v, tuple | list) else [v]) if x is not None)
    return ", ".join(values)


def _unexpected(exc: BaseException) -> None:
    if state.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    where = _input_label()
    command = click.get_current_context(silent=True)
    name = command.command_path if command is not None else "awm"
    err_console.print(
        f"[bold red]error:[/] unexpected {type(exc).__name__}"
        + (f" while processing {escape(where)}" if where else "")
        + f": {escape(first_line(exc))}. awmtrace does not check this input yet or has a bug; "
        + ("the traceback is above" if state.verbose else f"run `{escape(name.replace(' ', ' -v ', 1))} ...` for the traceback")
        + ", and please report it.",
        soft_wrap=True,
    )
    sys.exit(EXIT_INTERNAL)


def friendly_errors(fn: F) -> F:
    """One line on stderr and a documented exit code for every error; a traceback only with ``-v``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except AwmError as exc:
            if state.verbose > 1:
                traceback.print_exception(exc, file=sys.stderr)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader of stdout went away (`awm ... | head`): nothing more can be delivered; say so by the exit code only.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_OUTPUT)
        except MemoryError:
            where = _input_label()
            err_console.print(
                f"[bold red]error:[/] out of memory{' on ' + escape(where) if where else ''}; "
                "the model is too large for this machine's RAM",
                soft_wrap=True,
            )
            sys.exit(EXIT_INPUT)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            err_console.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", soft_wrap=True)
            sys.exit(EXIT_INPUT)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
            _unexpected(exc)

    return wrapper  # type: ignore[return-value]


def check_output(path: Path | None, what: str, suffixes: tuple[str, ...] = (), directory: bool = False) -> Path | None:
    """Check an output path before any computing: known suffix, parent created and writable, not a directory.

    Raises :class:`click.BadParameter` (usage error) for a wrong suffix and
    exits with :data:`EXIT_OUTPUT` when the place cannot be written.
    """
    if path is None:
        return None
    path = path.expanduser()
    if suffixes and path.suffix.lower().lstrip(".") not in suffixes:
        raise click.BadParameter(f"{path}: {what} must end in {', '.join('.' + s for s in suffixes)}", param_hint=what)
    folder = path if directory else path.parent
    problem = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"cannot create folder {folder} ({exc.strerror or exc})"
    if problem is None:
        if not directory and path.is_dir():
            problem = f"{path} is a directory"
        elif not os.access(folder, os.W_OK | os.X_OK):
            problem = f"folder {folder} is not writable"
        elif path.exists() and not directory and not os.access(path, os.W_OK):
            problem = f"{path} exists and is not writable"
    if problem is not None:
        err_console.print(f"[bold red]error:[/] cannot write the {what}: {escape(problem)}; nothing was computed", soft_wrap=True)
        sys.exit(EXIT_OUTPUT)
    return path


def write_output(what: str, path: Path, write: Callable[[], Any], announce: bool = True) -> bool:
    """Run ``write``; on failure say so on stderr, remember it for the exit code, and go on (the result is still printed)."""
    try:
        write()
    except (OSError, AwmError) as exc:
        state.output_failed = True
        err_console.print(
            f"[bold red]error:[/] could not write the {what} to {escape(str(path))}: {escape(first_line(exc))}", soft_wrap=True
        )
        return False
    if announce:
        info(f"{what} written to {path}")
    return True


def finish(flagged: bool = False, incomplete: bool = False) -> None:
    """Exit with the code the run earned: output error, then incomplete, then --fail-on, else 0."""
    if state.output_failed:
        sys.exit(EXIT_OUTPUT)
    if incomplete:
        sys.exit(EXIT_INCOMPLETE)
    if flagged:
        sys.exit(EXIT_FLAGGED)


def record_input(spec: str, kind: str, **fields: Any) -> None:
    """Note an input of this command for the audit trail (``spec`` as given, ``kind``, fingerprint, repo, commit ...)."""
    entry = {"spec": spec, "kind": kind, **{k: v for k, v in fields.items() if v not in (None, "")}}
    state.inputs.append(entry)


def record_file_input(path: Path | str, kind: str) -> None:
    """Record a file input (store, results, suites, null or labels file) with the sha256 of its bytes."""
    from awmtrace.io.fingerprint import file_fingerprint

    p = Path(path).expanduser()
    fp = None
    if p.is_file():
        try:
            fp = "sha256:" + file_fingerprint(p)
        except OSError:
            fp = None
    record_input(str(path), kind, path=str(p.absolute()), fingerprint=fp)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def audit() -> dict[str, Any]:
    """Who made this output, when, from what: awmtrace version, UTC time, the command, its options and inputs."""
    from awmtrace import __version__

    ctx = click.get_current_context(silent=True)
    return {
        "tool": "awmtrace",
        "version": __version__,
        "time_utc": state.started or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": ctx.command_path if ctx is not None else "awm",
        "options": _jsonable(dict(ctx.params)) if ctx is not None else {},
        "inputs": list(state.inputs),
    }


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)


def with_audit(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``schema_version`` first (when absent) and the ``audit`` block last."""
    return {"schema_version": obj.get("schema_version", SCHEMA_VERSION), **obj, "audit": audit()}


def emit_json(obj: dict[str, Any]) -> None:
    """Print one JSON object to stdout, with ``schema_version`` and the audit trail; nothing else goes to stdout."""
    click.echo(dumps(with_audit(obj)))


quiet_option = click.option("-q", "--quiet", is_flag=True, help=f"No progress messages (also: {NO_PROGRESS_ENV}=1).")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (schema in awmtrace/data/schemas) instead of tables."
)

__all__ = [
    "EXIT_OK",
    "EXIT_FLAGGED",
    "EXIT_USAGE",
    "EXIT_INPUT",
    "EXIT_OUTPUT",
    "EXIT_INCOMPLETE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "console",
    "err_console",
    "progress_reporter",
    "friendly_errors",
    "emit_json",
]


class DeviceType(click.ParamType):
    """``--device``: what :func:`awmtrace.core.backend.select_backend` accepts (auto, cpu, torch-cpu, cuda, cuda:N)."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[auto|cpu|torch-cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from awmtrace.core.backend import DEVICES, is_device

        text = str(value).strip().lower()
        if not is_device(text):
            self.fail(f"{value!r} is not a device; choose from {', '.join(DEVICES)} (N: a CUDA device number)", param, ctx)
        return text

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(d) for d in ("auto", "cpu", "torch-cpu", "cuda", "cuda:0") if d.startswith(incomplete)]


def device_option(
    help_text: str = "Where to compute: auto (CUDA through the torch extra when present, else CPU), cpu, torch-cpu, cuda, cuda:N.",
) -> Any:
    return click.option("--device", type=DeviceType(), default="auto", show_default=True, help=help_text)


FAIL_ON = {"related": ("related",), "inconclusive": ("related", "inconclusive")}


def fail_on_option(what: str = "the verdict") -> Any:
    return click.option(
        "--fail-on",
        type=click.Choice(sorted(FAIL_ON)),
        default=None,
        help=f"Exit with 1 when {what} is related (--fail-on related) or not independent (--fail-on inconclusive), "
        "for scripts that gate on it.",
    )


def flagged(labels: Any, fail_on: str | None) -> bool:
    """Whether any of ``labels`` (verdict labels) trips ``--fail-on``."""
    return fail_on is not None and any(label in FAIL_ON[fail_on] for label in labels)


def record_model(spec: str, model: Any, ffn: bool = False) -> None:
    """Record an opened model for the audit trail: its path, content fingerprint and, for Hub snapshots, repo and commit."""
    from awmtrace.io.fingerprint import content_fingerprint, hub_snapshot
    from awmtrace.pipeline import tensors_read

    path = Path(str(model.source.path))
    hub = hub_snapshot(path) or {}
    record_input(
        spec,
        "model",
        path=str(path.absolute()),
        format=model.view.format,
        fingerprint="sha256:" + content_fingerprint(model.source, tensors_read(model.view, ffn)),
        repo=hub.get("repo"),
        commit=hub.get("commit"),
    )
