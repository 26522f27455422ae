"""``awm suite list|show|run|report``: the paper's experiment suites."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    console,
    emit_json,
    err_console,
    escape,
    friendly_errors,
    json_option,
    progress_reporter,
    quiet_option,
    table,
)
from awmtrace.core.backend import DEVICES
from awmtrace.store import DEFAULT_STORE

suites_file_option = click.option(
    "--suites",
    "suites_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A suites JSON file of your own (default: the paper's nine suites).",
)
store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_STORE,
    show_default=True,
    help="Results store (an SQLite file).",
)


@main.group()
def suite() -> None:
    """The paper's experiment suites: list, show, run into a results store, report."""


@suite.command("list")
@suites_file_option
@json_option
@friendly_errors
def list_(suites_file: Path | None, as_json: bool) -> None:
    """List the suites with their category, expected label and pair count."""
    from awmtrace.suites import load_suites

    suites = load_suites(suites_file)
    if as_json:
        emit_json({"suites": [{k: v for k, v in s.to_dict().items() if k not in ("models", "pairs")} for s in suites.values()]})
        return
    t = table()
    t.add_column("suite", no_wrap=True)
    t.add_column("category")
    t.add_column("expected")
    t.add_column("pairs", justify="right")
    t.add_column("no repo id")
    for s in suites.values():
        t.add_row(escape(s.name), escape(s.category), s.label, str(len(s.pairs)), escape(", ".join(s.models_without_repo)) or "-")
    console.print(t)


@suite.command()
@click.argument("name")
@suites_file_option
@json_option
@friendly_errors
def show(name: str, suites_file: Path | None, as_json: bool) -> None:
    """List the pairs of suite NAME, with repo ids and the expected label."""
    from awmtrace.suites import get_suite

    s = get_suite(name, suites_file)
    if as_json:
        emit_json(s.to_dict())
        return
    console.print(f"[bold]{escape(s.name)}[/]: {escape(s.category)}, {len(s.pairs)} pairs, expected [bold]{s.label}[/]")
    pairs = table()
    pairs.add_column("#", justify="right")
    pairs.add_column("A", no_wrap=True)
    pairs.add_column("B", no_wrap=True)
    for i, (a, b) in enumerate(s.pairs, start=1):
        pairs.add_row(str(i), escape(a), escape(b))
    console.print(pairs)
    models = table()
    models.add_column("model", no_wrap=True)
    models.add_column("Hugging Face repo id", no_wrap=True)
    for m in dict.fromkeys(m for p in s.pairs for m in p):
        models.add_row(escape(m), _repo_text(s.repo_of(m)))
    console.print(models)
    if s.models_without_repo:
        console.print(
            f"[yellow]note:[/] the paper gives no repo id for {escape(', '.join(s.models_without_repo))}; "
            "put such a model in --models-dir under its short name"
        )


def _repo_text(repo: str | None) -> str:
    return escape(repo) if repo else "[yellow](not given by the paper)[/]"


def _fmt(v: float | None, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


@suite.command()
@click.argument("name")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of local models, one sub-folder per model (short name or repo name).",
)
@store_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Where to compute.")
@click.option(
    "--weights", default="q,k", show_default=True, help="Matrices to score: q,k (the AWM score); add up and/or gate for FFN scores."
)
@click.option(
    "--align",
    type=click.Choice(["auto", "lap", "orthogonal", "ids"]),
    default="auto",
    show_default=True,
    help="Hidden-dim alignment: auto, lap, orthogonal, or ids (token rows matched by id, then as auto).",
)
@click.option(
    "--null", "null", default=None, metavar="NAME|FILE", help="Null distribution for z and p (default: the paper's published summary)."
)
@click.option("--no-fetch", is_flag=True, help="Use only --models-dir and the cache; never download from the Hub.")
@suites_file_option
@json_option
@quiet_option
@friendly_errors
def run(
    name: str,
    models_dir: Path | None,
    store_path: Path,
    device: str,
    weights: str,
    align: str,
    null: str | None,
    no_fetch: bool,
    suites_file: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Compare every pair of suite NAME and store the results.

    Models are looked up in --models-dir (by short name, then repo name),
    else fetched from the Hub (only the tensors the method reads). Pairs
    already stored with the same inputs, options and awmtrace version are
    skipped, so an interrupted run continues where it stopped. Exit status:
    0 when every pair has a result, 1 when some are missing or failed.
    """
    from awmtrace.suites import PairOutcome, get_suite, run_suite

    s = get_suite(name, suites_file)

    def report(o: PairOutcome) -> None:
        if as_json:
            return
        head = f"[{o.index}/{o.total}] {escape(o.name_a)} vs {escape(o.name_b)}:"
        if o.status in ("done", "skipped") and o.record is not None:
            r = o.record.result
            verdict = (r.get("verdict") or {}).get("label", "")
            extra = " [dim](already stored)[/]" if o.status == "skipped" else ""
            err_console.print(f"{head} score {_fmt(r.get('score'), 4)}, z {_fmt(r.get('z'), 1)} ({verdict}){extra}")
        elif o.status == "missing":
            err_console.print(f"{head} [yellow]skipped[/], missing {escape(', '.join(o.missing_models))} (reasons below)")
        else:
            err_console.print(f"{head} [bold red]failed[/]: {escape(o.message or '')}")

    with progress_reporter(quiet or as_json) as progress:
        result = run_suite(
            s,
            store=store_path,
            models_dir=models_dir,
            device=device,
            weights=weights,
            align=align,
            null=null,
            fetch=not no_fetch,
            progress=progress,
            on_pair=report,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        counts = ", ".join(f"{result.count(k)} {k}" for k in ("done", "skipped", "missing", "failed") if result.count(k))
        console.print(f"{escape(s.name)}: {len(result.outcomes)} pairs: {counts}; results in {escape(result.store_path)}")
        for model, why in result.missing_models.items():
            console.print(f"[yellow]missing model[/] {escape(model)}: {escape(why)}")
    if not result.complete:
        raise SystemExit(1)


_COLUMNS = ("category", "base", "offspring", "score_q", "score_k", "score", "z", "p_holm", "paper_abs_z", "verdict", "expected", "status")


def _row_values(d: dict[str, Any]) -> dict[str, str]:
    return {
        "category": d["category"],
        "base": d["base"],
        "offspring": d["offspring"],
        "score_q": _fmt(d["score_q"], 4),
        "score_k": _fmt(d["score_k"], 4),
        "score": _fmt(d["score"], 4),
        "z": _fmt(d["z"], 2),
        "p_holm": "-" if d["p_holm"] is None else f"{d['p_holm']:.2g}",
        "paper_abs_z": _fmt(d["paper_abs_z"], 2),
        "verdict": d["verdict"] or "-",
        "expected": d["label"],
        "status": d["status"],
    }


@suite.command("report")
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "md", "json"]), default="table", show_default=True, help="Output format."
)
@store_option
@suites_file_option
@click.option("--null", "null", default=None, metavar="NAME|FILE", help="Recompute z and verdicts under this null (default: as stored).")
@friendly_errors
def report_(name: str, fmt: str, store_path: Path, suites_file: Path | None, null: str | None) -> None:
    """The paper-style table of suite NAME from the results store, with the paper's |z| where it has the pair."""
    from awmtrace.core.stats import multiple_comparison_note
    from awmtrace.nulls import load_null
    from awmtrace.suites import get_suite, suite_report

    s = get_suite(name, suites_file)
    null_model = load_null(null) if null is not None else None
    rows = [r.to_dict() for r in suite_report(s, store_path, null=null_model)]
    done_count = sum(1 for r in rows if r["status"] == "done")
    mc_note = multiple_comparison_note(done_count)
    if fmt == "json":
        emit_json(
            {
                "suite": s.name,
                "category": s.category,
                "label": s.label,
                "store": str(store_path),
                "null": null_model.to_dict() if null_model is not None else "as stored",
                "multiple_comparison_note": mc_note,
                "rows": rows,
            }
        )
        return
    values = [_row_values(r) for r in rows]
    notes = [f"{r['base']} -> {r['offspring']}: {r['paper_note']}" for r in rows if r["paper_note"]]
    if mc_note:
        notes.append(mc_note)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for r in rows:
            cells = [r["label" if c == "expected" else c] for c in _COLUMNS]
            writer.writerow(["" if v is None else v for v in cells])
        click.echo(buf.getvalue(), nl=False)
        return
    headers = {"paper_abs_z": "paper |z|", "score_q": "score_q", "score_k": "score_k", "p_holm": "p (Holm)"}
    if fmt == "md":
        click.echo("| " + " | ".join(headers.get(c, c) for c in _COLUMNS) + " |")
        click.echo("|" + "|".join("---:" if c in ("score_q", "score_k", "score", "z", "paper_abs_z") else "---" for c in _COLUMNS) + "|")
        for v in values:
            click.echo("| " + " | ".join(v[c].replace("|", "\\|") for c in _COLUMNS) + " |")
        for note in notes:
            click.echo(f"\nNote: {note}")
        return
    t = table(title=f"{s.name} ({s.category}; expected {s.label})")
    for c in _COLUMNS:
        t.add_column(headers.get(c, c), justify="right" if c in ("score_q", "score_k", "score", "z", "paper_abs_z") else "left")
    for v in values:
        t.add_row(*(escape(v[c]) for c in _COLUMNS))
    console.print(t)
    done = sum(1 for r in rows if r["status"] == "done")
    console.print(f"{done} of {len(rows)} pairs have results in {escape(str(store_path))}")
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
