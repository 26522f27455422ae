"""``awm stress``: a robustness audit of one model (transformed in-memory copies scored against it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    check_output,
    console,
    device_option,
    emit_json,
    epilog,
    escape,
    finish,
    friendly_errors,
    json_option,
    note,
    progress_reporter,
    quiet_option,
    record_input,
    table,
    write_output,
)
from awmtrace.report.text import fmt_num
from awmtrace.transforms import TRANSFORMS

_VERDICT_STYLE = {"related": "bold red", "inconclusive": "bold yellow", "independent": "bold green"}


def _transform_list() -> Any:
    t = table(title="Transforms (--transforms a,b,...; default: all)")
    for col in ("name", "function-preserving", "what it does"):
        t.add_column(col)
    for tr in TRANSFORMS.values():
        fp = "yes" + (" (RMSNorm models)" if tr.rms_only else "") if tr.function_preserving else "no"
        t.add_row(tr.name, fp, escape(tr.description))
    return t


def _fmt_err(row: dict[str, Any]) -> str:
    err = row.get("check_max_rel_err")
    if err is None:
        return "-"
    text = f"{err:.1e}"
    return text if row.get("check_passed") else f"[bold red]FAIL {text}[/]"


def print_report(data: dict[str, Any]) -> None:
    """The stress table, its notes and how the check was run."""
    # No edges and collapsed padding: seven columns fit 80 characters.
    t = table(title=f"awm stress {escape(str(data['model'].get('spec') or data['model']['path']))}", show_edge=False, collapse_padding=True)
    for col, just in (
        ("transform", "left"),
        ("preserving", "left"),
        ("check err", "right"),
        ("score", "right"),
        ("z", "right"),
        ("verdict", "left"),
        ("s", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=True)
    for row in data["transforms"]:
        style = _VERDICT_STYLE.get(row["verdict"], "")
        t.add_row(
            row["name"],
            "yes" if row["function_preserving"] else "no",
            _fmt_err(row),
            fmt_num(row["score"]),
            fmt_num(row["z"], 1),
            f"[{style}]{row['verdict']}[/]",
            f"{row['seconds']:.1f}",
        )
    console.print(t)
    check = data["check"]
    console.print(
        f"[dim]check: layer 0, {len(check['token_ids'])} tokens, {check['norm']} norm, RoPE {check['rope_layout']}; "
        f"passes at relative error <= {check['tolerance']:g}; preserving: the transform keeps the network's function; s: seconds. "
        f"z against null {escape(str(data['null']['name']))}. "
        f"{data['elapsed_s']:.1f} s in all.[/]"
    )
    # Notes go to stderr, once each, like every command's (results alone on stdout).
    for text in [*data.get("notes", []), *check.get("notes", [])]:
        note(text)
    for row in data["transforms"]:
        for text in row.get("notes", []):
            note(f"({row['name']}) {text}")


_EXAMPLES = (
    "awm stress ./my-model                                  # every transform, a table",
    "awm stress ./my-model --transforms haar_rotation,gain_fold --json",
    "awm stress org/name --plot stress.png                   # and a bar chart (png, svg or pdf)",
    "awm stress ./my-model --transforms list                # what each transform does",
)


@main.command(epilog=epilog(*_EXAMPLES))
@click.argument("model", metavar="MODEL")
@click.option(
    "--transforms",
    default="all",
    show_default=True,
    metavar="LIST",
    help=f"Comma-separated transforms, or 'list' to describe them: {', '.join(TRANSFORMS)}.",
)
@json_option
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a bar chart of the scores (.png, .svg or .pdf)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random transform and of the check tokens.")
@device_option()
@click.option("--null", "null", default=None, metavar="NAME|FILE", help="Null distribution for z (default: the paper's).")
@quiet_option
@friendly_errors
def stress(model: str, transforms: str, as_json: bool, plot: Path | None, seed: int, device: str, null: str | None, quiet: bool) -> None:
    """Audit how robust AWM's verdict is on MODEL: score transformed copies (in memory, never on disk) against it.

    Function-preserving transforms are proven so on layer 0 (worst relative
    error of q/k/v, attention logits and the residual update).
    """
    if transforms.strip() == "list":
        console.print(_transform_list())
        return
    from awmtrace.stress import parse_transforms
    from awmtrace.stress import stress as run_stress

    names = parse_transforms(transforms)  # a bad name fails here, before the model is opened or anything written
    plot = check_output(plot, "--plot", ("png", "svg", "pdf"))
    record_input(model, "model")
    with progress_reporter(quiet) as progress:
        report = run_stress(model, names, seed=seed, device=device, null=null, progress=progress)
    data = report.to_dict()
    if plot is not None:
        from awmtrace.report.figures import plot_stress

        write_output("figure", plot, lambda: plot_stress(data, plot))
    if as_json:
        emit_json(data)
    else:
        print_report(data)
    finish()
