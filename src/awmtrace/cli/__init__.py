"""The ``awm`` command. Subcommands live in sibling modules that register on :data:`main`.

Only this package (and :mod:`awmtrace.report`) formats text; the library
returns results and raises :class:`awmtrace.errors.AwmError`.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from awmtrace import __version__
from awmtrace.cli.common import EXIT_CODES_HELP, reset_state

_VERBOSE = {"-v": 1, "-vv": 2, "-vvv": 3, "--verbose": 1}


class _Group(click.Group):
    """A group whose ``-v``/``--verbose`` may also come after the subcommand (``awm compare A B -v``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in ("-h", "--help"):
            front, rest, seen_command = [], [], False
            for i, arg in enumerate(args):
                if arg == "--":
                    rest.extend(args[i:])
                    break
                if seen_command and arg in _VERBOSE:
                    front.extend(["-v"] * _VERBOSE[arg])
                    continue
                if not arg.startswith("-") and not seen_command:
                    seen_command = True
                rest.append(arg)
            args = front + rest
        return super().parse_args(ctx, args)


_COMPLETION = """\b
Shell completion (bash; zsh_source / fish_source for zsh / fish):
  eval "$(_AWM_COMPLETE=bash_source awm)"      # in ~/.bashrc

\b
Environment:
  NO_COLOR=1                  no colours
  AWM_NO_PROGRESS=1           no progress messages (as -q)
  AWM_PROGRESS_INTERVAL=SEC   seconds between progress lines when stderr is not a terminal (default 10)"""


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_COMPLETION + "\n\n" + EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="awm")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log what the library decides (-vv for debug); tracebacks for unexpected errors. Also after the subcommand.",
)
def main(verbose: int) -> None:
    """Tell whether one LLM was derived from another, from their weights alone (AWM).

    Results go to stdout; notes, progress and errors to stderr.
    """
    reset_state(verbose)
    log = logging.getLogger("awmtrace")
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING - 10 * min(verbose, 2))


class _StderrHandler(logging.Handler):
    """Log records to whatever stderr is when they are emitted (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


def run() -> Any:
    """Entry point of ``python -m awmtrace``."""
    return main(prog_name="awm")


# Each module adds its commands to ``main`` when imported.
from awmtrace.cli import compare as _compare  # noqa: E402,F401
from awmtrace.cli import demo as _demo  # noqa: E402,F401
from awmtrace.cli import hub as _hub  # noqa: E402,F401
from awmtrace.cli import inspect as _inspect  # noqa: E402,F401
from awmtrace.cli import matrix as _matrix  # noqa: E402,F401
from awmtrace.cli import report as _report  # noqa: E402,F401
from awmtrace.cli import stats as _stats  # noqa: E402,F401
from awmtrace.cli import stress as _stress  # noqa: E402,F401
from awmtrace.cli import suite as _suite  # noqa: E402,F401

__all__ = ["main"]
