"""Helpers every subcommand shares: error handling, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from awmtrace.errors import AwmError
from awmtrace.report.schema import finite_json

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)


def table(**kwargs: Any) -> Any:
    """A rich table in the house style: no vertical rules, so it fits 80 columns."""
    from rich import box
    from rich.table import Table

    kwargs.setdefault("box", box.SIMPLE_HEAD)
    kwargs.setdefault("pad_edge", False)
    kwargs.setdefault("title_justify", "left")
    return Table(**kwargs)


err_console = Console(stderr=True, highlight=False)


def friendly_errors(fn: F) -> F:
    """Turn :class:`AwmError` (and a few OS errors) into one red line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AwmError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            sys.exit(130)
        except MemoryError:
            err_console.print("[bold red]error:[/] out of memory; the model is too large for this machine's RAM")
            sys.exit(3)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            err_console.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", soft_wrap=True)
            sys.exit(3)

    return wrapper  # type: ignore[return-value]


def escape(text: str) -> str:
    """Escape rich markup in text that came from files or users."""
    from rich.markup import escape as _escape

    return _escape(text)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)


def emit_json(obj: Any) -> None:
    """Print one JSON document to stdout (nothing else goes to stdout in --json mode)."""
    click.echo(dumps(obj))


@contextmanager
def progress_reporter(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback for stderr.

    Rich bars on a terminal; with ``AWM_PROGRESS=1`` and no terminal (CI logs,
    pipes), one plain line per finished stage; nothing when ``quiet``.
    """
    if quiet:
        yield lambda stage, done, total: None
        return
    if not err_console.is_terminal:
        if not _force_progress():
            yield lambda stage, done, total: None
            return

        def line(stage: str, done: int, total: int) -> None:
            if done >= total:
                click.echo(f"{stage}: {done}/{total}", err=True)

        yield line
        return
    bars = Progress(
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=max(total, 1))
        bars.update(tasks[stage], completed=done, total=max(total, 1))

    with bars:
        yield update


def _force_progress() -> bool:
    import os

    return os.environ.get("AWM_PROGRESS") == "1"


quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
