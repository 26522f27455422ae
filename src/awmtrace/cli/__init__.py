"""The ``awm`` command. Subcommands live in sibling modules that register on :data:`main`.

Only this package (and :mod:`awmtrace.report`) formats text; the library
returns results and raises :class:`awmtrace.errors.AwmError`.
"""

from __future__ import annotations

import logging

import click

from awmtrace import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="awm")
@click.option("-v", "--verbose", count=True, help="Log what the library decides (-vv for debug).")
def main(verbose: int) -> None:
    """Tell whether one LLM was derived from another, from their weights alone (AWM)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Each module adds its commands to ``main`` when imported.
from awmtrace.cli import compare as _compare  # noqa: E402,F401
from awmtrace.cli import hub as _hub  # noqa: E402,F401
from awmtrace.cli import matrix as _matrix  # noqa: E402,F401
from awmtrace.cli import stats as _stats  # noqa: E402,F401
from awmtrace.cli import suite as _suite  # noqa: E402,F401

__all__ = ["main"]
