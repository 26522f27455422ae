"""One self-contained, offline HTML page per comparison, drawn from the stored result.

Inline CSS, the figure embedded as a base64 PNG, no script and no external
URL, so the file can be mailed, archived or opened on an air-gapped machine.
Every string that came from a file or a user is escaped.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from awmtrace.errors import FormatError
from awmtrace.nulls import null_caveats
from awmtrace.report.figures import pair_figure_png, short_name
from awmtrace.report.schema import SCHEMA_VERSION
from awmtrace.report.text import fmt_num as _fmt_num
from awmtrace.report.text import fmt_p, fmt_value

__all__ = ["write_pair_report", "pair_report_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; word-break: break-all; }
h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { text-align: left; padding: 0.25em 0.8em 0.25em 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; font-weight: bold; font-size: 1.3em; padding: 0.2em 0.7em; border-radius: 4px; color: #fff; }
.related { background: #c0392b; } .inconclusive { background: #d68910; } .independent { background: #1e8449; }
.rule { color: #555; } .caveat { background: #fef9e7; border-left: 4px solid #d68910; padding: 0.4em 0.8em; margin: 0.4em 0; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; height: auto; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; }
code { background: #f4f4f4; padding: 0 0.2em; word-break: break-all; }
td { overflow-wrap: anywhere; } th { overflow-wrap: normal; hyphens: auto; min-width: 6em; } thead th { min-width: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 0.5em 0; }
@media (max-width: 600px) { body { margin: 1em auto; font-size: 15px; } h1 { font-size: 1.25em; } }
@media print {
  body { max-width: none; margin: 0; color: #000; }
  h1, h2, h3 { break-after: avoid; page-break-after: avoid; }
  figure, table, tr, img, .caveat { break-inside: avoid; page-break-inside: avoid; }
  .verdict { border: 2px solid #000; color: #000; background: none !important; }
}
"""

#: No network: the page may load nothing but its own inline style and data: images.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _grid(header: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _model_rows(result: dict[str, Any]) -> str:
    a, b = result.get("a") or {}, result.get("b") or {}

    def cell(m: dict[str, Any], key: str) -> str:
        return escape(fmt_value(m.get(key)))

    keys = [
        ("model", "spec"),
        ("format", "format"),
        ("architecture", "architecture"),
        ("hidden size", "hidden_size"),
        ("layers", "n_layers"),
        ("heads", "n_heads"),
        ("kv heads", "n_kv_heads"),
        ("vocabulary rows", "vocab_size"),
        ("tokenizer", "tokenizer_source"),
    ]
    rows = [[escape(label), cell(a, k) if k != "spec" else escape(str(a.get("spec") or a.get("path", "-"))),
             cell(b, k) if k != "spec" else escape(str(b.get("spec") or b.get("path", "-")))] for label, k in keys]  # fmt: skip
    return _grid(["", "A (candidate base)", "B (suspect)"], rows)


def _provenance(prov: dict[str, Any]) -> str:
    rows = []
    for k, v in prov.items():
        if k == "pairs" and isinstance(v, list):
            v = f"{len(v)} pairs (listed in the null file)"
        text = json.dumps(v) if isinstance(v, dict) else fmt_value(v)
        rows.append((str(k), f"<code>{escape(text)}</code>" if len(text) > 80 else escape(text)))
    return _table(rows) if rows else "<p class='note'>no provenance recorded</p>"


def _audit(audit: Any) -> str:
    """The audit trail: tool version, UTC time, command and options, and each input with its content fingerprint."""
    if not isinstance(audit, dict):
        return "<h2>Audit trail</h2><p class='note'>not recorded (result written by an older awmtrace)</p>"
    raw_options = audit.get("options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    rows = [
        ("awmtrace version", escape(fmt_value(audit.get("version")))),
        ("computed (UTC)", escape(fmt_value(audit.get("time_utc")))),
        ("command", f"<code>{escape(fmt_value(audit.get('command')))}</code>"),
        ("options", escape(", ".join(f"{k}={fmt_value(v)}" for k, v in options.items())) or "-"),
    ]
    inputs = [i for i in audit.get("inputs") or [] if isinstance(i, dict)]
    grid = _grid(
        ["input", "path", "content fingerprint", "Hub repo @ commit"],
        [
            [
                escape(fmt_value(i.get("spec"))),
                f"<code>{escape(fmt_value(i.get('path')))}</code>",
                f"<code>{escape(fmt_value(i.get('fingerprint')))}</code>",
                escape(f"{i['repo']} @ {i.get('commit', '?')}" if i.get("repo") else "-"),
            ]
            for i in inputs
        ],
    )
    return "<h2>Audit trail</h2>" + _table(rows) + (grid if inputs else "")


def _p_relation(p: Any) -> str:
    """``= 0.012`` or ``< 1e-300``: the p-value after its relation sign."""
    text = fmt_p(p)
    return escape(text if text.startswith("<") else f"= {text}")


def _hp(p: Any) -> str:
    return escape(fmt_p(p))


def fmt_num(x: Any, digits: int = 4) -> str:
    return escape(_fmt_num(x, digits))


def pair_report_html(result: dict[str, Any]) -> str:
    """The HTML page of one stored result (``PairResult.to_dict()``), as a string."""
    if not isinstance(result, dict) or "score" not in result:
        raise FormatError("not an awmtrace pair result (no 'score'); cannot write a report")
    png = pair_figure_png(result)
    verdict = result.get("verdict") or {}
    label = str(verdict.get("label", "unknown"))
    null = result.get("null") or {}
    title = f"{short_name(result.get('a'))} vs {short_name(result.get('b'))}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>awmtrace: {escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p><span class="verdict {escape(label)}">{escape(label.upper())}</span> '
        f'<span class="rule">score {fmt_num(result.get("score"))}, z = {fmt_num(result.get("z"), 2)}, '
        f"p {_p_relation(result.get('p_value'))}</span></p>",
        "<h2>Evidence</h2>",
        _evidence(result, verdict, null),
        # The alignment caveat is also a result note: show it once.
        "".join(f'<p class="caveat">{escape(c)}</p>' for c in null_caveats(result) if c not in set(result.get("notes") or [])),
        "<p class='note'>z counts how many standard deviations of the null (scores of independent model pairs) the "
        "score lies above the null mean. The normal-tail p-value is P(Z &ge; z) for a standard normal; the empirical "
        "p-value, when the null has raw scores, is (k+1)/(n+1) with k of its n pairs scoring at least as high.</p>",
        "<h2>Per-layer similarity</h2>",
        f'<figure><img alt="per-layer Wq and Wk similarity of {escape(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>',
        "<h2>Models</h2>",
        _model_rows(result),
        "<h2>Alignment and layer matching</h2>",
        _table(_alignment_rows(result.get("alignment") or {}, result.get("layer_matching") or {})),
        "<h2>Per layer</h2>",
        _layer_grid(result.get("layers") or []),
        _audit(result.get("audit")),
        *_ffn_section(result.get("ffn")),
        *_null_section(null),
        *_notes_and_footer(result),
    ]
    return "\n".join(parts) + "\n"


def _evidence(result: dict[str, Any], verdict: dict[str, Any], null: dict[str, Any]) -> str:
    """The table of score, z, p-values, rule and null behind the verdict."""
    emp = result.get("p_empirical")
    res = null.get("empirical_resolution")
    emp_txt = f"{_hp(emp)} (resolution 1/(n+1) = {_hp(res)})" if emp is not None else "n/a (the null holds no raw scores)"
    thresholds = verdict.get("thresholds") or {}
    return _table(
        [
            ("score (mean of Wq, Wk)", fmt_num(result.get("score"))),
            ("score_q / score_k", f"{fmt_num(result.get('score_q'))} / {fmt_num(result.get('score_k'))}"),
            ("z", fmt_num(result.get("z"), 2)),
            ("p-value (normal tail)", _hp(result.get("p_value"))),
            ("p-value (empirical)", emp_txt),
            ("verdict rule", escape(str(verdict.get("rule", "-")))),
            ("thresholds used", escape(", ".join(f"{k}: z >= {v}" for k, v in thresholds.items())) or "-"),
            (
                "null",
                escape(
                    f"{fmt_value(null.get('name'))}: mean {fmt_value(null.get('mean'))}, std {fmt_value(null.get('std'))}, "
                    f"n = {fmt_value(null.get('n'))}"
                ),
            ),
        ]
    )


def _alignment_rows(al: dict[str, Any], lm: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows describing the hidden-dimension alignment and the layer matching."""
    base = "A" if al.get("base") == "a" else "B"
    return [
        ("method", escape(str(al.get("method", "-")))),
        ("shared tokens", escape(str(al.get("n_shared_tokens", "-")))),
        ("hidden sizes (A, B)", escape(f"{al.get('hidden_size_a')}, {al.get('hidden_size_b')}; base {base}")),
        ("sign flips", escape(str(al.get("n_sign_flips", "-")))),
        ("identity alignment", escape(fmt_value(al.get("identity")))),
        ("mean |cos| of matched dims", fmt_num(al.get("mean_abs_cosine"))),
        (
            "layer matching",
            escape(
                "1:1 (same depth)"
                if lm.get("method") == "identity"
                else f"LAP over {lm.get('n_layers_a')} x {lm.get('n_layers_b')} layer scores, {len(lm.get('pairs') or [])} pairs matched"
            ),
        ),
    ]


def _layer_grid(layers: list[dict[str, Any]]) -> str:
    rows = [
        [str(r.get("index_a")), str(r.get("index_b")), fmt_num(r.get("score_q")), fmt_num(r.get("score_k")), fmt_num(r.get("score"))]
        for r in layers
    ]
    return _grid(["layer A", "layer B", "score_q", "score_k", "score"], rows, {0, 1, 2, 3, 4})


def _ffn_section(ffn: Any) -> list[str]:
    """The FFN input projections' section, or nothing when the result has none."""
    if not (isinstance(ffn, dict) and ffn.get("layers")):
        return []
    ffn_rows = [
        [escape(str(r.get("weight"))), str(r.get("index_a")), str(r.get("index_b")),
         escape(fmt_value(r.get("expert_a"))), escape(fmt_value(r.get("expert_b"))), fmt_num(r.get("score"))]
        for r in ffn["layers"]
    ]  # fmt: skip
    return [
        "<h2>FFN input projections</h2>",
        f"<p class='note'>{escape(str(ffn.get('note', 'reported apart from the AWM score')))}</p>",
        _grid(["weight", "layer A", "layer B", "expert A", "expert B", "score"], ffn_rows, {1, 2, 5}),
    ]


def _null_section(null: dict[str, Any]) -> list[str]:
    return [
        "<h2>Null distribution</h2>",
        _table(
            [
                ("name", escape(str(null.get("name", "?")))),
                ("mean / std / n", escape(f"{fmt_value(null.get('mean'))} / {fmt_value(null.get('std'))} / {fmt_value(null.get('n'))}")),
                ("raw scores", "yes" if null.get("has_raw_scores") else "no"),
                ("source", escape(str(null.get("source", "-")))),
            ]
        ),
        "<h3>Provenance</h3>",
        _provenance(null.get("provenance") or {}),
    ]


def _notes_and_footer(result: dict[str, Any]) -> list[str]:
    notes = result.get("notes") or []
    parts = ["<h2>Notes</h2><ul>", *(f"<li>{escape(str(n))}</li>" for n in notes), "</ul>"] if notes else []
    tool = result.get("tool") or {}
    return [
        *parts,
        f"<footer>awmtrace {escape(str(tool.get('version', '?')))}, result schema "
        f"{escape(str(result.get('schema_version', SCHEMA_VERSION)))}; computed on {escape(str(result.get('device', '?')))} "
        f"in {fmt_num(result.get('elapsed_s'), 1)} s. Drawn from the stored result; no weights were read.</footer>",
        "</body></html>",
    ]


def write_pair_report(result: dict[str, Any], path: str | Path) -> Path:
    """Write the self-contained HTML report of one stored result (``PairResult.to_dict()``) at ``path``."""
    path = Path(path).expanduser()
    path.write_text(pair_report_html(result), encoding="utf-8")
    return path
