"""``awm calibrate`` (a null from stored independent pairs) and ``awm evaluate`` (ROC, pAUC, |z| tables)."""

from __future__ import annotations

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
    table,
)
from awmtrace.evaluate import FPR_TARGET, MAX_FPR
from awmtrace.report.text import fmt_p


@main.command()
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

    pairs = load_pairs(source, suites or None)
    null = calibrate_null(pairs, name=name, source=str(source), suites=suites)
    save_null(null, output)
    if as_json:
        emit_json({"path": str(output), **null_to_dict(null)})
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
        console.print(f"[dim]left out: {excluded['related']} related pair(s), {excluded['repeated']} repeated result(s)[/]")
    for note in prov["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    err_console.print(f"[dim]null written to {escape(str(output))}; use it with --null {escape(str(output))}[/]")


def _num(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "-"


@main.command()
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

    ev = evaluate_path(source, labels=labels, suites=suites or None, null=null, max_fpr=max_fpr, fpr_target=fpr_target)
    written = write_evaluation(ev, out_dir) if out_dir is not None else {}
    if as_json:
        d = ev.to_dict()
        d["files"] = {k: str(v) for k, v in written.items()}
        emit_json(d)
        return
    thr = ev.threshold
    t = table(show_header=False, title=f"{ev.n_related} related vs {ev.n_independent} independent pairs")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("AUC", f"{ev.auc:.4f}")
    t.add_row(
        f"pAUC (FPR <= {ev.max_fpr:g})",
        f"{ev.pauc:.4f} McClish-standardised; raw area {ev.pauc_raw:.5f} = {ev.pauc_normalized:.4f} of the strip",
    )
    t.add_row(f"TPR at {ev.fpr_target:.0%} FPR", f"{ev.tpr_at_fpr:.4f} (at FPR {ev.fpr_at_target:.4f})")
    z_txt = f" (z = {thr['z']:.2f} under {escape(str(thr['null']))})" if "z" in thr else ""
    t.add_row("best threshold", f"score >= {thr['threshold']:.5g}{z_txt}: TPR {thr['tpr']:.3f}, FPR {thr['fpr']:.3f}")
    t.add_row("margin", f"{thr['margin']:.5g} ({'separable' if thr['separable'] else 'classes overlap'})")
    console.print(t)
    console.print(f"[dim]threshold: {escape(thr['rule'])}[/]")
    zt = table(title="|z| of related pairs")
    for col, just in (
        ("suite", "left"),
        ("a", "left"),
        ("b", "left"),
        ("score", "right"),
        ("|z|", "right"),
        ("p", "right"),
        ("p Holm", "right"),
        ("verdict", "left"),
    ):
        zt.add_column(col, justify=just)
    for r in ev.z_table:
        zt.add_row(
            escape(str(r["suite"] or "-")),
            escape(r["a"]),
            escape(r["b"]),
            _num(r["score"]),
            _num(r["abs_z"], 2),
            escape(fmt_p(r["p_value"])),
            escape(fmt_p(r["p_holm"])),
            escape(str(r["verdict"])),
        )
    console.print(zt)
    wrong = [r for r in ev.pairs if (r["verdict"] == "related") != (r["label"] == "related")]
    if wrong:
        console.print(
            f"[yellow]{len(wrong)} pair(s) whose verdict disagrees with the label:[/] "
            + escape(", ".join(f"{r['a']} vs {r['b']} ({r['verdict']}, expected {r['label']})" for r in wrong[:8]))
        )
    note = ev.multiple_comparisons["note"]
    if note:
        console.print(f"[dim]{escape(note)}[/]")
    for n in ev.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    for kind, path in written.items():
        err_console.print(f"[dim]{kind} written to {escape(str(path))}[/]")
