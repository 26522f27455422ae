"""``awm compare``: one pair, a verdict, tables or JSON, and optionally a figure and an HTML report."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    add_columns,
    check_output,
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
    record_model,
    table,
    with_audit,
    write_output,
)
from awmtrace.core.stats import Z_INCONCLUSIVE, Z_RELATED
from awmtrace.pipeline import ALIGN_CHOICES, MIN_SHARED_TOKENS, CompareOptions, compare_models, open_model, wants_ffn
from awmtrace.report.text import fmt_num, fmt_p, fmt_value

VERDICT_STYLE = {"related": "bold red", "inconclusive": "bold yellow", "independent": "bold green"}
PLOT_FORMATS = ("png", "svg", "pdf")


def model_name(summary: dict[str, Any]) -> str:
    """A model as the user named it (spec), else its path; never shortened."""
    return str(summary.get("spec") or summary.get("path") or "?")


def verdict_line(result: dict[str, Any]) -> str:
    """One line: what was decided about which two models, on what number, under which null."""
    v = result.get("verdict") or {}
    label = str(v.get("label", "unknown"))
    style = VERDICT_STYLE.get(label, "bold")
    null = result.get("null") or {}
    emp = result.get("p_empirical")
    resolution = null.get("empirical_resolution")
    floor = f" (resolution {fmt_p(resolution)})" if resolution else ""
    emp_txt = f", empirical p {fmt_p(emp)}{floor}" if emp is not None else ""
    return (
        f"[{style}]{escape(label.upper())}[/]: "
        f"B {escape(model_name(result.get('b') or {}))} vs A {escape(model_name(result.get('a') or {}))}: "
        f"score {fmt_num(result.get('score'))}, z = {fmt_num(result.get('z'), 1)}, p = {fmt_p(result.get('p_value'))}{emp_txt} "
        f"(null: {escape(fmt_value(null.get('name')))}; {escape(fmt_value(v.get('rule')))})"
    )


def _model_table(result: dict[str, Any]) -> Any:
    t = table()
    add_columns(t, "", "A (candidate base)", "B (suspect)", fold=("A (candidate base)", "B (suspect)"))
    a, b = result["a"], result["b"]

    def row(label: str, fn: Any) -> None:
        t.add_row(label, escape(fn(a)), escape(fn(b)))

    row("model", model_name)
    row("format", lambda m: fmt_value(m.get("format")))
    row("architecture", lambda m: f"{fmt_value(m.get('architecture'))} [{fmt_value(m.get('family'))}]")
    row("hidden / layers", lambda m: f"{fmt_value(m.get('hidden_size'))} / {fmt_value(m.get('n_layers'))}")
    row("heads (kv)", lambda m: f"{fmt_value(m.get('n_heads'))} ({fmt_value(m.get('n_kv_heads'))})")
    row("tokenizer", lambda m: fmt_value(m.get("tokenizer_source")))
    return t


def _score_table(result: dict[str, Any]) -> Any:
    al = result["alignment"]
    lm = result["layer_matching"]
    t = table(show_header=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    base = "A" if al["base"] == "a" else "B"
    tokens = al.get("tokens", "ids" if al["method"] == "ids" else "vocab")
    align = f"{al['n_shared_tokens']} shared tokens" if tokens == "vocab" else f"token ids ({al['n_shared_tokens']} rows)"
    if al["method"] == "orthogonal":
        dims = "orthogonal (rotation)"
    else:
        dims = f"{al['n_sign_flips']} sign flips"
    quality = al.get("quality") or {}
    evidence = ", ".join(f"{k} {v:.3f}" for k, v in quality.items() if isinstance(v, float))
    layers = (
        f"1:1 ({lm['n_layers_a']} layers)"
        if lm["method"] == "identity"
        else f"LAP over {lm['n_layers_a']} x {lm['n_layers_b']} layers, {len(lm['pairs'])} matched"
    )
    t.add_row("score_q / score_k", f"{fmt_num(result['score_q'])} / {fmt_num(result['score_k'])}")
    t.add_row("score", fmt_num(result["score"]))
    t.add_row("z / p-value", f"{fmt_num(result['z'], 1)} / {fmt_p(result['p_value'])}")
    t.add_row(
        "alignment",
        f"{align}; base {base} (hidden {max(al['hidden_size_a'], al['hidden_size_b'])}); {dims}",
    )
    if evidence:
        t.add_row("alignment evidence", f"{al['method']} chosen ({evidence})")
    t.add_row("layer matching", layers)
    return t


def _layer_table(result: dict[str, Any]) -> Any:
    t = table(title="Per layer")
    cols = ("layer A", "layer B", "score_q", "score_k", "score")
    add_columns(t, *cols, right=cols)
    for row in result["layers"]:
        t.add_row(str(row["index_a"]), str(row["index_b"]), fmt_num(row["score_q"]), fmt_num(row["score_k"]), fmt_num(row["score"]))
    return t


def _ffn_table(ffn: dict[str, Any], per_layer: bool) -> Any:
    t = table(title="FFN input projections (reported apart; not part of the AWM score)")
    if per_layer:
        cols = ("weight", "layer A", "layer B", "expert A", "expert B", "score")
        add_columns(t, *cols, right=cols)
        for row in ffn["layers"]:
            t.add_row(
                row["weight"],
                str(row["index_a"]),
                str(row["index_b"]),
                fmt_value(row["expert_a"]),
                fmt_value(row["expert_b"]),
                fmt_num(row["score"]),
            )
    else:
        add_columns(t, "weight", "mean score", "layers", right=("mean score", "layers"))
        for w in ffn["weights"]:
            t.add_row(w, fmt_num(ffn.get(f"score_{w}")), str(ffn.get(f"n_layers_{w}", 0)))
    return t


def result_notes(result: dict[str, Any]) -> list[str]:
    """Every note of a result once: the models' own, the comparison's, and the null's caveats."""
    from awmtrace.nulls import null_caveats

    model_notes = [f"{side.upper()}: {n}" for side in ("a", "b") for n in result[side].get("notes", [])]
    return list(dict.fromkeys([*model_notes, *result.get("notes", []), *null_caveats(result)]))


def print_result(result: dict[str, Any], per_layer: bool) -> None:
    """Tables and the verdict line on stdout; notes on stderr."""
    console.print(_model_table(result))
    console.print()
    console.print(_score_table(result))
    if per_layer:
        console.print()
        console.print(_layer_table(result))
    if result.get("ffn"):
        console.print()
        console.print(_ffn_table(result["ffn"], per_layer))
    for text in result_notes(result):
        note(text)
    console.print(verdict_line(result), soft_wrap=True)


_EXAMPLES = (
    "awm compare meta-llama/Llama-2-7b-hf lmsys/vicuna-7b-v1.5",
    "awm compare ./base ./suspect.gguf --json > result.json",
    "awm compare A B --fail-on related -q || echo 'B looks derived from A'",
    "awm compare A B --plot layers.svg --report page.html",
)


@main.command(epilog=epilog(*_EXAMPLES))
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@json_option
@click.option("--per-layer", is_flag=True, help="Show the per-layer table.")
@click.option(
    "--weights", default="q,k", show_default=True, help="Matrices to score: q,k (the AWM score); add up and/or gate for FFN scores."
)
@click.option(
    "--align",
    type=click.Choice(ALIGN_CHOICES),
    default="auto",
    show_default=True,
    help="Hidden-dim alignment on shared tokens: auto (LAP unless the embeddings show a rotated copy), lap "
    "(permutation + signs), orthogonal (Procrustes rotation); ids: match token rows by id (vocab sizes must agree), then as auto.",
)
@device_option()
@click.option(
    "--null", "null", default=None, metavar="NAME|FILE", help="Null distribution for z and p (default: the paper's published summary)."
)
@click.option(
    "--min-shared-tokens",
    type=click.IntRange(4),
    default=MIN_SHARED_TOKENS,
    show_default=True,
    help="Fewest shared tokens accepted for alignment.",
)
@click.option("--z-related", type=float, default=Z_RELATED, show_default=True, help="z at or above which the verdict is 'related'.")
@click.option("--z-inconclusive", type=float, default=Z_INCONCLUSIVE, show_default=True, help="z below which the verdict is 'independent'.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a per-layer figure; .png, .svg or .pdf.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a self-contained HTML report.")
@fail_on_option()
@click.option(
    "--fold-norms/--no-fold-norms",
    default=True,
    show_default=True,
    help="Score Q/K (and FFN inputs) as W @ diag(gamma) with the gain of the norm feeding them.",
)
@quiet_option
@friendly_errors
def compare(  # noqa: PLR0913 - one parameter per click option
    model_a: str,
    model_b: str,
    as_json: bool,
    per_layer: bool,
    weights: str,
    align: str,
    device: str,
    null: str | None,
    min_shared_tokens: int,
    z_related: float,
    z_inconclusive: float,
    plot: Path | None,
    report: Path | None,
    fail_on: str | None,
    fold_norms: bool,
    quiet: bool,
) -> None:
    """Score how likely B derives from A (each a directory, .safetensors, .gguf, .bin, or Hub id org/name[@rev])."""
    plot = check_output(plot, "--plot", PLOT_FORMATS)
    report = check_output(report, "--report", ("html", "htm"))
    options = CompareOptions(
        weights=weights,
        align=align,
        device=device,
        null=null,
        min_shared_tokens=min_shared_tokens,
        z_related=z_related,
        z_inconclusive=z_inconclusive,
        fold_norms=fold_norms,
    ).validated()
    ffn = wants_ffn(options.kinds)
    with progress_reporter(quiet) as progress, ExitStack() as stack:
        models = []
        for side, spec in (("A", model_a), ("B", model_b)):
            with progress.stage(f"opening {side}: {spec}"):
                models.append(stack.enter_context(open_model(spec, progress, ffn=ffn)))
        result = compare_models(models[0], models[1], options, progress=progress)
        if as_json or report is not None:
            with progress.stage("fingerprinting the tensors read (audit trail)"):
                for spec, m in zip((model_a, model_b), models, strict=True):
                    record_model(spec, m, ffn)
    data = with_audit(result.to_dict())
    write_figures(data, plot, report)
    if as_json:
        emit_json(data)
    else:
        print_result(data, per_layer)
    finish(flagged=flagged([data["verdict"]["label"]], fail_on))


def write_figures(data: dict[str, Any], plot: Path | None, report: Path | None) -> None:
    """Write the figure and the HTML page of a result; a failure is reported and remembered, the result still printed."""
    if plot is not None:
        from awmtrace.report.figures import plot_pair

        write_output("figure", plot, lambda: plot_pair(data, plot))
    if report is not None:
        from awmtrace.report.html import write_pair_report

        write_output("report", report, lambda: write_pair_report(data, report))
