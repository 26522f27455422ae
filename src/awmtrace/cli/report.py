"""``awm report``: rebuild the HTML page (and figure) of a saved ``awm compare --json`` result, without reading weights."""

from __future__ import annotations

import json
from pathlib import Path

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    check_output,
    console,
    epilog,
    finish,
    friendly_errors,
    record_file_input,
)
from awmtrace.cli.compare import PLOT_FORMATS, verdict_line, write_figures
from awmtrace.errors import FormatError, InputNotFound, first_line


@main.command(
    "report",
    epilog=epilog(
        "awm compare A B --json > result.json",
        "awm report result.json -o page.html",
        "awm report result.json -o page.html --plot layers.pdf",
    ),
)
@click.argument("result_path", metavar="RESULT.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HTML page to write.")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the per-layer figure (.png, .svg or .pdf)."
)
@friendly_errors
def report_(result_path: Path, output: Path, plot: Path | None) -> None:
    """Write the HTML report of a saved pair result (the JSON of `awm compare --json`); prints its verdict line."""
    output = check_output(output, "--output", ("html", "htm"))  # type: ignore[assignment]
    plot = check_output(plot, "--plot", PLOT_FORMATS)
    if not result_path.is_file():
        raise InputNotFound(f"{result_path}: no such file; give the JSON that `awm compare --json` printed")
    try:
        data = json.loads(result_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{result_path}: not JSON ({first_line(exc)}); give the output of `awm compare --json`") from None
    if not isinstance(data, dict) or not isinstance(data.get("verdict"), dict) or "a" not in data or "b" not in data:
        raise FormatError(f"{result_path}: not an awmtrace pair result (no verdict, a and b); give the output of `awm compare --json`")
    record_file_input(result_path, "result")
    write_figures(data, plot, output)
    console.print(verdict_line(data), soft_wrap=True)
    finish()
