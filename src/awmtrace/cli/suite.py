"""``awm suite list|show|run|report``: the paper's experiment suites."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    add_columns,
    console,
    device_option,
    emit_json,
    epilog,
    escape,
    fail_on_option,
    finish,
    flagged,
    friendly_errors,
    json_option,
    note,
    progress_reporter,
    quiet_option,
    record_file_input,
    record_model,
    table,
)
from awmtrace.report.text import fmt_num, fmt_p
from awmtrace.store import DEFAULT_STORE

if TYPE_CHECKING:
    from awmtrace.suites import Suite, SuiteRun

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


@suite.command("list", epilog=epilog("awm suite list", "awm suite list --suites my-suites.json --json"))
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
    rows = [
        [escape(s.name), escape(s.category), s.label, str(len(s.pairs)), escape(", ".join(s.models_without_repo)) or "-"]
        for s in suites.values()
    ]
    add_columns(t, "suite", "category", "expected", "pairs", "no repo id", right=("pairs",), fold=("suite",), cells=rows)
    for row in rows:
        t.add_row(*row)
    console.print(t)


@suite.command(epilog=epilog("awm suite show sft_pairs", "awm suite show independent_pairs --json"))
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
    pair_rows = [[str(i), escape(a), escape(b)] for i, (a, b) in enumerate(s.pairs, start=1)]
    add_columns(pairs, "#", "A", "B", right=("#",), fold=("A", "B"), cells=pair_rows)
    for row in pair_rows:
        pairs.add_row(*row)
    console.print(pairs)
    models = table()
    model_rows = [[escape(m), _repo_text(s.repo_of(m))] for m in dict.fromkeys(m for p in s.pairs for m in p)]
    add_columns(
        models,
        "model",
        "Hugging Face repo id",
        fold=("model", "Hugging Face repo id"),
        cells=[[m, s.repo_of(m) or ""] for m in dict.fromkeys(m for p in s.pairs for m in p)],
    )
    for row in model_rows:
        models.add_row(*row)
    console.print(models)
    if s.models_without_repo:
        note(
            f"the paper gives no repo id for {', '.join(s.models_without_repo)}; "
            "put such a model in --models-dir under its short name (a folder, or a NAME.gguf / NAME.safetensors file)",
            style="yellow",
        )


def _repo_text(repo: str | None) -> str:
    return escape(repo) if repo else "[yellow](not given by the paper)[/]"


@suite.command(
    epilog=epilog(
        "awm suite run sft_pairs",
        "awm suite run independent_pairs --models-dir ~/models --no-fetch",
        "awm suite run my_suite --suites my-suites.json --fail-on related",
    )
)
@click.argument("name")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of local models: a sub-folder or a NAME.gguf / NAME.safetensors / NAME.bin file per model (short name or repo name).",
)
@store_option
@device_option()
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
@fail_on_option("any pair's verdict")
@json_option
@quiet_option
@friendly_errors
def run(  # noqa: PLR0913 - one parameter per click option
    name: str,
    models_dir: Path | None,
    store_path: Path,
    device: str,
    weights: str,
    align: str,
    null: str | None,
    no_fetch: bool,
    suites_file: Path | None,
    fail_on: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Compare every pair of suite NAME and store the results.

    Models are looked up in --models-dir (by short name, then repo name),
    else fetched from the Hub (only the tensors the method reads). Pairs
    already stored with the same inputs, options and awmtrace version are
    skipped, so an interrupted run continues where it stopped. Exit status:
    0 when every pair has a result, 5 when some are missing or failed,
    1 when --fail-on matched a stored verdict.
    """
    from awmtrace.suites import get_suite

    s = get_suite(name, suites_file)
    if suites_file is not None:
        record_file_input(suites_file, "suites")
    labels: list[str] = []
    options = {"models_dir": models_dir, "device": device, "weights": weights, "align": align, "null": null, "fetch": not no_fetch}
    result = _run_pairs(s, store_path, options, labels, as_json, quiet)
    if as_json:
        _record_models(result, weights, progress_reporter(quiet or as_json))
        emit_json(result.to_dict())
    else:
        counts = ", ".join(f"{result.count(k)} {k}" for k in ("done", "skipped", "missing", "failed") if result.count(k))
        console.print(f"{escape(s.name)}: {len(result.outcomes)} pairs: {counts}; results in {escape(result.store_path)}")
        for model, why in result.missing_models.items():
            note(f"missing model {model}: {why}", style="yellow")
    finish(flagged=flagged(labels, fail_on), incomplete=not result.complete)


def _run_pairs(s: Suite, store_path: Path, options: dict[str, Any], labels: list[str], as_json: bool, quiet: bool) -> SuiteRun:
    """Run the suite, announcing each pair before it is computed and its outcome after; verdict labels go to ``labels``."""
    from awmtrace.suites import PairOutcome, run_suite

    with progress_reporter(quiet or as_json) as progress:

        def announce(i: int) -> None:
            if i <= len(s.pairs) and not as_json:
                a, b = s.pairs[i - 1]
                progress.say(f"[{i}/{len(s.pairs)}] {escape(a)} vs {escape(b)} ...")

        def report(o: PairOutcome) -> None:
            if o.record is not None:
                labels.append((o.record.result.get("verdict") or {}).get("label", ""))
            if not as_json:
                progress.say(_outcome_line(o))
            announce(o.index + 1)

        announce(1)
        return run_suite(s, store=store_path, progress=progress, on_pair=report, **options)


def _record_models(result: Any, weights: str, reporter: Any) -> None:
    """Content fingerprints of every model a stored result came from, for the audit trail of ``suite run --json``."""
    from awmtrace.pipeline import open_model, wants_ffn

    models: dict[str, str] = {}
    for o in result.outcomes:
        if o.record is not None:
            models.setdefault(o.record.name_a, o.record.spec_a or "")
            models.setdefault(o.record.name_b, o.record.spec_b or "")
    with reporter as progress:
        for name, spec in models.items():
            if spec and Path(spec).exists():
                with progress.stage(f"fingerprinting {name}"), open_model(spec) as model:
                    record_model(name, model, wants_ffn(weights))


def _outcome_line(o: Any) -> str:
    head = f"[{o.index}/{o.total}] {escape(o.name_a)} vs {escape(o.name_b)}:"
    if o.status in ("done", "skipped") and o.record is not None:
        r = o.record.result
        verdict = (r.get("verdict") or {}).get("label", "")
        extra = " [dim](already stored)[/]" if o.status == "skipped" else ""
        return f"{head} score {fmt_num(r.get('score'), 4, missing='-')}, z {fmt_num(r.get('z'), 1, missing='-')} ({verdict}){extra}"
    if o.status == "missing":
        return f"{head} [yellow]skipped[/], missing {escape(', '.join(o.missing_models))} (reasons below)"
    return f"{head} [bold red]failed[/]: {escape(o.message or '')}"


_COLUMNS = ("category", "base", "offspring", "score_q", "score_k", "score", "z", "p_holm", "paper_abs_z", "verdict", "expected", "status")


def _row_values(d: dict[str, Any]) -> dict[str, str]:
    return {
        "category": d["category"],
        "base": d["base"],
        "offspring": d["offspring"],
        "score_q": fmt_num(d["score_q"], 4, missing="-"),
        "score_k": fmt_num(d["score_k"], 4, missing="-"),
        "score": fmt_num(d["score"], 4, missing="-"),
        "z": fmt_num(d["z"], 2, missing="-"),
        "p_holm": fmt_p(d["p_holm"], missing="-"),
        "paper_abs_z": fmt_num(d["paper_abs_z"], 2, missing="-"),
        "verdict": d["verdict"] or "-",
        "expected": d["label"],
        "status": d["status"],
    }


@suite.command(
    "report",
    epilog=epilog(
        "awm suite report sft_pairs",
        "awm suite report sft_pairs --format md > sft.md",
        "awm suite report independent_pairs --null my-null.json --fail-on related",
    ),
)
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "md", "json"]), default="table", show_default=True, help="Output format."
)
@store_option
@suites_file_option
@click.option("--null", "null", default=None, metavar="NAME|FILE", help="Recompute z and verdicts under this null (default: as stored).")
@fail_on_option("any pair's verdict")
@friendly_errors
def report_(name: str, fmt: str, store_path: Path, suites_file: Path | None, null: str | None, fail_on: str | None) -> None:
    """The paper-style table of suite NAME from the results store, with the paper's |z| where it has the pair."""
    from awmtrace.core.stats import multiple_comparison_note
    from awmtrace.nulls import load_null
    from awmtrace.suites import get_suite, suite_report

    s = get_suite(name, suites_file)
    null_model = load_null(null) if null is not None else None
    rows = [r.to_dict() for r in suite_report(s, store_path, null=null_model)]
    record_file_input(store_path, "store")
    if suites_file is not None:
        record_file_input(suites_file, "suites")
    gate = flagged((r["verdict"] for r in rows if r["status"] == "done"), fail_on)
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
        finish(flagged=gate)
        return
    notes = [f"{r['base']} -> {r['offspring']}: {r['paper_note']}" for r in rows if r["paper_note"]]
    if mc_note:
        notes.append(mc_note)
    if fmt == "csv":
        _print_csv(rows)
    elif fmt == "md":
        _print_md(rows, notes)
    else:
        _print_table(s, rows, store_path, notes)
    finish(flagged=gate)


_HEADERS = {"paper_abs_z": "paper |z|", "p_holm": "p (Holm)"}
_NUMERIC = ("score_q", "score_k", "score", "z", "p_holm", "paper_abs_z")


def _print_csv(rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for r in rows:
        cells = [r["label" if c == "expected" else c] for c in _COLUMNS]
        writer.writerow(["" if v is None else v for v in cells])
    click.echo(buf.getvalue(), nl=False)


def _print_md(rows: list[dict[str, Any]], notes: list[str]) -> None:
    click.echo("| " + " | ".join(_HEADERS.get(c, c) for c in _COLUMNS) + " |")
    click.echo("|" + "|".join("---:" if c in _NUMERIC else "---" for c in _COLUMNS) + "|")
    for v in map(_row_values, rows):
        click.echo("| " + " | ".join(v[c].replace("|", "\\|") for c in _COLUMNS) + " |")
    for text in notes:
        click.echo(f"\nNote: {text}")


#: Below this many columns the table shows each pair on two lines and leaves score_q/score_k to csv/md/json.
_WIDE = 130


def _print_table(s: Any, rows: list[dict[str, Any]], store_path: Path, notes: list[str]) -> None:
    """The suite table on stdout, full at wide terminals and compact (still every name in full) at 80 columns."""
    t = table(title=f"{s.name} ({s.category}; expected {s.label})")
    values = [_row_values(r) for r in rows]
    if console.width >= _WIDE:
        cols = [c for c in _COLUMNS if c != "category"]
        add_columns(t, *(_HEADERS.get(c, c) for c in cols), right=tuple(_HEADERS.get(c, c) for c in _NUMERIC), fold=("base", "offspring"))
        for v in values:
            t.add_row(*(escape(v[c]) for c in cols))
    else:
        cols = ["score", "z", "p_holm"] + (["paper_abs_z"] if any(v["paper_abs_z"] != "-" for v in values) else [])
        t = table(title=t.title, expand=True)
        t.add_column("pair", overflow="fold", ratio=1)  # the names take all the width the numbers leave
        for c in cols:
            t.add_column(_HEADERS.get(c, c), justify="right", no_wrap=True)
        t.add_column("verdict", no_wrap=True)
        for v in values:
            pair = f"{escape(v['base'])} ->\n{escape(v['offspring'])}"
            verdict = v["verdict"] if v["status"] == "done" else v["status"]
            if v["status"] == "done" and v["verdict"] != v["expected"]:
                verdict += " *"
            t.add_row(pair, *(escape(v[c]) for c in cols), escape(verdict))
    console.print(t)
    done = sum(1 for r in rows if r["status"] == "done")
    console.print(f"{done} of {len(rows)} pairs have results in {escape(str(store_path))}", soft_wrap=True)
    if console.width < _WIDE:
        console.print(f"[dim]* verdict differs from the expected label ({escape(s.label)}); score_q, score_k: --format csv, md or json[/]")
    for text in notes:
        note(text, style="yellow")
