"""Progress for people who wait: bars with an ETA on a terminal, periodic plain lines elsewhere.

The library reports ``progress(stage, done, total)``; this module draws it on
stderr. ``-q`` or ``AWM_NO_PROGRESS=1`` turns it off; ``AWM_PROGRESS_INTERVAL``
(seconds, default 10) sets how often a plain line is written when stderr is
not a terminal (CI logs, pipes). ``NO_COLOR`` is honoured by rich.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

NO_PROGRESS_ENV = "AWM_NO_PROGRESS"
PROGRESS_INTERVAL_ENV = "AWM_PROGRESS_INTERVAL"

__all__ = ["Reporter", "progress_reporter", "progress_disabled"]


def progress_disabled() -> bool:
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_INTERVAL_ENV, "10")))
    except ValueError:
        return 10.0


def _eta(elapsed: float, done: int, total: int) -> str:
    if done <= 0 or total <= 0 or done >= total:
        return ""
    left = elapsed * (total - done) / done
    return f", about {left:.0f} s left" if left < 120 else f", about {left / 60:.0f} min left"


class Reporter:
    """``reporter(stage, done, total)`` is the library's progress callback; ``reporter.stage(text)`` marks a wait of unknown length."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        return None

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        yield

    def say(self, text: str) -> None:
        """A line above the bars (stderr), e.g. which pair comes next."""
        from awmtrace.cli.common import err_console

        err_console.print(text, soft_wrap=True, highlight=False)


class _Lines(Reporter):
    """Plain lines on stderr: when a stage starts, then at most every ``interval`` seconds with done/total and an ETA."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.started: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage not in self.started:
            self.started[stage] = self.last[stage] = now
            click.echo(f"{stage} ...", err=True)
        elif now - self.last[stage] >= self.interval and done < total:
            self.last[stage] = now
            pct = f" ({100 * done / total:.0f}%)" if total > 0 else ""
            click.echo(f"{stage}: {done}/{total}{pct}{_eta(now - self.started[stage], done, total)}", err=True)
        if total > 0 and done >= total:
            self.started.pop(stage, None)  # a later stage of the same name (next pair) announces itself again

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        click.echo(f"{text} ...", err=True)
        yield


class _Bars(Reporter):
    def __init__(self, bars: Any) -> None:
        self.bars = bars
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=max(total, 1))
        self.bars.update(self.tasks[stage], completed=done, total=max(total, 1))
        if total > 0 and done >= total:
            self.bars.remove_task(self.tasks.pop(stage))

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        task = self.bars.add_task(text, total=None)  # no total: rich shows a pulsing bar, the elapsed time runs
        try:
            yield
        finally:
            self.bars.remove_task(task)

    def say(self, text: str) -> None:
        self.bars.console.print(text, soft_wrap=True, highlight=False)


@contextmanager
def progress_reporter(quiet: bool = False) -> Iterator[Reporter]:
    """A :class:`Reporter` for stderr: rich bars on a terminal, periodic plain lines otherwise, nothing when quiet."""
    from awmtrace.cli.common import err_console

    if quiet or progress_disabled():
        yield Reporter()
        return
    if not err_console.is_terminal:
        yield _Lines(_interval())
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console.get(),
        transient=True,
    )
    with bars:
        yield _Bars(bars)
