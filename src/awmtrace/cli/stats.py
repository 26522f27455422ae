"""``awm calibrate`` (a null from stored independent pairs) and ``awm evaluate`` (ROC, pAUC, |z| tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    add_columns,
    check_output,
    console,
    emit_json,
    epilog,
    escape,
    finish,
    friendly_errors,
    info,
    json_option,
    note,
    record_file_input,
    table,
    write_output,
)
from awmtrace.evaluate import FPR_TARGET, MAX_FPR, Evaluation
from awmtrace.report.text import fmt_num, fmt_p


@main.command(
    epilog=epilog(
        "awm calibrate --from awm-results.sqlite -o my-null.json",
        "awm calibrate --from results.jsonl --suite independent_pairs -o null.json",
        "awm compare A B --null my-null.json",
    )
)
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path),
    metavar="STORE|RESULTS",
    help="Results store (SQLite, from `awm suite run`) or a JSON / JSON-lines results file.",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    metavar="NAME",
    help="Use only this suite's results (repeatable; default: every pair not labelled related).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Null file to write (JSON).")
@click.option("--name", default=None, help="Name recorded in the null file (default: calibrated-SUITES).")
@json_option
@friendly_errors
def calibrate(source: Path, suites: tuple[str, ...], output: Path, name: str | None, as_json: bool) -> None:
    """Build a null distribution from stored results of independent pairs (use it with --null FILE)."""
    from awmtrace.evaluate import load_pairs
    from awmtrace.nulls import calibrate_null, null_to_dict, save_null

    output = check_output(output, "--output")  # type: ignore[assignment]
    record_file_input(source, "results")
    pairs = load_pairs(source, suites or None)
    null = calibrate_null(pairs, name=name, source=str(source), suites=suites)
    written = write_output("null", output, lambda: save_null(null, output))
    if as_json:
        emit_json({"path": str(output) if written else None, **null_to_dict(null)})
        finish()
        return
    prov = null.provenance
    t = table(show_header=False, title=f"null {escape(null.name)}")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("pairs", f"{null.n} ({prov['n_cross_size']} cross-size)")
    t.add_row("mean / std", f"{null.mean:.5f} / {null.std:.5f}")
    t.add_row("min / max", f"{min(null.scores):.5f} / {max(null.scores):.5f}")
    t.add_row("suites", escape(", ".join(prov["suites"]) or "-"))
    t.add_row("awmtrace versions", escape(", ".join(prov["tool_versions"]) or "-"))
    t.add_row("empirical p resolution", f"1/(n+1) = {1 / (null.n + 1):.3g}")
    console.print(t)
    excluded = prov["excluded"]
    if excluded["related"] or excluded["repeated"]:
        info(f"left out: {excluded['related']} related pair(s), {excluded['repeated']} repeated result(s)")
    for text in prov["notes"]:
        note(text, style="yellow")
    if written:
        info(f"use it with --null {output}")
    finish()


@main.command(
    epilog=epilog(
        "awm evaluate awm-results.sqlite",
        "awm evaluate results.jsonl --labels labels.csv -o eval/",
        "awm evaluate awm-results.sqlite --null my-null.json --json",
    )
)
@click.argument("source", type=click.Path(path_type=Path), metavar="STORE|RESULTS")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV (a,b,label) or JSON list of {a, b, label}; overrides stored labels.",
)
@click.option("--suite", "suites", multiple=True, metavar="NAME", help="Evaluate only this suite's results (repeatable).")
@click.option(
    "--null", "null", default=None, metavar="NAME|FILE", help="Re-score z and p under this null (default: the z stored with each result)."
)
@click.option(
    "--max-fpr", type=click.FloatRange(0, 1, min_open=True), default=MAX_FPR, show_default=True, help="Upper FPR of the partial AUC."
)
@click.option(
    "--fpr-target",
    type=click.FloatRange(0, 1, max_open=True),
    default=FPR_TARGET,
    show_default=True,
    help="FPR at which the TPR is reported.",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for roc.png, scores.png, evaluation.json and z_table.csv.",
)
@json_option
@friendly_errors
def evaluate(
    source: Path,
    labels: Path | None,
    suites: tuple[str, ...],
    null: str | None,
    max_fpr: float,
    fpr_target: float,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """How well stored scores separate related from independent pairs: AUC, pAUC, TPR@FPR, threshold, |z| table."""
    from awmtrace.evaluate import evaluate_path
    from awmtrace.report.evaluation import write_evaluation

    out_dir = check_output(out_dir, "--out", directory=True)
    record_file_input(source, "results")
    if labels is not None:
        record_file_input(labels, "labels")
    ev = evaluate_path(source, labels=labels, suites=suites or None, null=null, max_fpr=max_fpr, fpr_target=fpr_target)
    written: dict[str, Any] = {}
    if out_dir is not None:
        folder = out_dir
        write_output("evaluation files", folder, lambda: written.update(write_evaluation(ev, folder)), announce=False)
    if as_json:
        d = ev.to_dict()
        d["files"] = {k: str(v) for k, v in written.items()}
        emit_json(d)
        finish()
        return
    _print_evaluation(ev)
    for n in ev.notes:
        note(n, style="yellow")
    for kind, path in written.items():
        info(f"{kind} written to {path}")
    finish()


def _print_evaluation(ev: Evaluation) -> None:
    """The summary table, the |z| table of related pairs, and the pairs whose verdict disagrees with their label."""
    console.print(_summary_table(ev))
    console.print(f"[dim]threshold: {escape(ev.threshold['rule'])}[/]")
    console.print(_z_table(ev))
    wrong = [r for r in ev.pairs if (r["verdict"] == "related") != (r["label"] == "related")]
    if wrong:
        console.print(
            f"[yellow]{len(wrong)} pair(s) whose verdict disagrees with the label:[/] "
            + escape(", ".join(f"{r['a']} vs {r['b']} ({r['verdict']}, expected {r['label']})" for r in wrong[:8]))
        )
    mc_note = ev.multiple_comparisons["note"]
    if mc_note:
        console.print(f"[dim]{escape(mc_note)}[/]")


def _summary_table(ev: Evaluation) -> Any:
    thr = ev.threshold
    t = table(show_header=False, title=f"{ev.n_related} related vs {ev.n_independent} independent pairs")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("AUC", fmt_num(ev.auc))
    t.add_row(
        f"pAUC (FPR <= {ev.max_fpr:g})",
        f"{fmt_num(ev.pauc)} McClish-standardised; raw area {fmt_num(ev.pauc_raw, 5)} = {fmt_num(ev.pauc_normalized)} of the strip",
    )
    t.add_row(f"TPR at {ev.fpr_target:.0%} FPR", f"{fmt_num(ev.tpr_at_fpr)} (at FPR {fmt_num(ev.fpr_at_target)})")
    z_txt = f" (z = {fmt_num(thr['z'], 2)} under {escape(str(thr['null']))})" if thr.get("z") is not None else ""
    t.add_row(
        "best threshold", f"score >= {fmt_num(thr['threshold'], 5)}{z_txt}: TPR {fmt_num(thr['tpr'], 3)}, FPR {fmt_num(thr['fpr'], 3)}"
    )
    t.add_row("margin", f"{fmt_num(thr['margin'], 5)} ({'separable' if thr['separable'] else 'classes overlap'})")
    return t


def _z_table(ev: Evaluation) -> Any:
    zt = table(title="|z| of related pairs")
    add_columns(zt, "suite", "a", "b", "score", "|z|", "p", "p Holm", "verdict", right=("score", "|z|", "p", "p Holm"), fold=("a", "b"))
    for r in ev.z_table:
        zt.add_row(
            escape(str(r["suite"] or "-")),
            escape(r["a"]),
            escape(r["b"]),
            fmt_num(r["score"], missing="-"),
            fmt_num(r["abs_z"], 2, missing="-"),
            escape(fmt_p(r["p_value"])),
            escape(fmt_p(r["p_holm"])),
            escape(str(r["verdict"])),
        )
    return zt
