"""Figures drawn from stored results (``PairResult.to_dict()`` and evaluations), never from weights.

Every figure is its own :class:`matplotlib.figure.Figure` on an Agg canvas:
no pyplot, so no global figure state and no display is ever touched.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from awmtrace.errors import FormatError, UsageError
from awmtrace.report.text import fmt_num

__all__ = [
    "plot_pair",
    "pair_figure",
    "pair_figure_png",
    "plot_roc",
    "roc_figure",
    "plot_scores",
    "plot_stress",
    "stress_figure",
    "scores_figure",
    "figure_png",
    "short_name",
]

_Q_COLOR = "#1f77b4"
_K_COLOR = "#ff7f0e"
_POS_COLOR = "#d62728"
_NEG_COLOR = "#2ca02c"
_DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


#: Figure formats by file extension, with the metadata that would make the bytes depend on the day left out.
FORMATS = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` in the format its extension names (png, svg, pdf); the same figure gives the same bytes."""
    path = Path(path).expanduser()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"{path}: cannot tell the figure format from the extension; use .png, .svg or .pdf")
    # A fixed salt makes SVG element ids (clip paths, glyphs) the same on every run.
    with rc_context({"svg.hashsalt": "awmtrace"}):
        fig.savefig(path, format=fmt, dpi=_DPI, metadata=FORMATS[fmt])
    return path


def short_name(summary: Any) -> str:
    """A model's display name: the last part of its spec/path."""
    if not isinstance(summary, dict):
        return "?"
    spec = str(summary.get("spec") or summary.get("path") or "?")
    return Path(spec.rstrip("/")).name or spec


def _layers(result: dict[str, Any]) -> list[dict[str, Any]]:
    layers = result.get("layers") if isinstance(result, dict) else None
    if not isinstance(layers, list) or not layers:
        raise FormatError("result has no per-layer scores ('layers'); it is not an awmtrace pair result and cannot be plotted")
    for row in layers:
        if not isinstance(row, dict) or not {"index_a", "index_b", "score_q", "score_k"} <= row.keys():
            raise FormatError("result's 'layers' entries need index_a, index_b, score_q and score_k")
    return layers


def pair_figure(result: dict[str, Any]) -> Figure:
    """Per-layer Wq / Wk similarity; with different depths, also the layer-score matrix and its matching."""
    layers = _layers(result)
    matching = result.get("layer_matching") or {}
    matrix = matching.get("score_matrix")
    show_matrix = matching.get("method") == "lap" and isinstance(matrix, list) and len(matrix) > 0
    fig = _figure(11.0 if show_matrix else 7.0, 4.2)
    if show_matrix:
        ax, axm = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    else:
        ax, axm = fig.subplots(1, 1), None
    idx_a = np.array([r["index_a"] for r in layers])
    sq = np.array([r["score_q"] for r in layers], dtype=float)
    sk = np.array([r["score_k"] for r in layers], dtype=float)
    ax.plot(idx_a, sq, "o-", color=_Q_COLOR, label="Wq", markersize=4)
    ax.plot(idx_a, sk, "s-", color=_K_COLOR, label="Wk", markersize=4)
    if isinstance(result.get("score"), int | float):
        ax.axhline(result["score"], color="black", linestyle="--", linewidth=1, label=f"score {result['score']:.4f}")
    null = result.get("null") or {}
    thresholds = (result.get("verdict") or {}).get("thresholds") or {}
    z_rel = thresholds.get("related", 5.0)
    if isinstance(null.get("mean"), int | float) and isinstance(null.get("std"), int | float):
        cut = null["mean"] + z_rel * null["std"]
        ax.axhline(cut, color="grey", linestyle=":", linewidth=1, label=f"z = {z_rel:g} ({cut:.3f})")
    if matching.get("method") == "lap":
        for x, y, r in zip(idx_a, (sq + sk) / 2, layers, strict=True):
            ax.annotate(f"B{r['index_b']}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7, color="dimgray")
    low = min(-0.05, float(np.nanmin(np.r_[sq, sk])) - 0.05)
    ax.set_ylim(low, 1.08)
    ax.set_xlabel("layer of A" + (" (matched layer of B above)" if matching.get("method") == "lap" else ""))
    ax.set_ylabel("UCKA similarity")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    label = (result.get("verdict") or {}).get("label", "?")
    ax.set_title(
        f"{short_name(result.get('a'))} vs {short_name(result.get('b'))}: {label.upper()} (z = {fmt_num(result.get('z'), 1)})",
        fontsize=10,
    )
    if axm is not None:
        m = np.asarray(matrix, dtype=float)
        im = axm.imshow(m, cmap="viridis", vmin=min(0.0, float(np.nanmin(m))), vmax=max(1.0, float(np.nanmax(m))), aspect="auto")
        for i, j in matching.get("pairs") or []:
            axm.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=_POS_COLOR, linewidth=2))
        axm.set_xlabel(f"layer of B ({matching.get('n_layers_b', m.shape[1])})")
        axm.set_ylabel(f"layer of A ({matching.get('n_layers_a', m.shape[0])})")
        axm.set_title("layer scores; boxes: LAP matching", fontsize=10)
        axm.xaxis.set_major_locator(MaxNLocator(integer=True))
        axm.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=axm, shrink=0.9)
    return fig


def pair_figure_png(result: dict[str, Any]) -> bytes:
    """:func:`pair_figure` as PNG bytes."""
    return figure_png(pair_figure(result))


def plot_pair(result: dict[str, Any], path: str | Path) -> Path:
    """Write the per-layer figure of one stored result (``PairResult.to_dict()``) at ``path`` (.png, .svg or .pdf)."""
    return _save(pair_figure(result), path)


def _eval_dict(evaluation: Any) -> dict[str, Any]:
    return evaluation.to_dict() if hasattr(evaluation, "to_dict") else dict(evaluation)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, x: float) -> float:
    """The ROC curve's height at FPR ``x``, interpolated on the segment that crosses ``x`` (as the pAUC cuts it)."""
    after = np.flatnonzero(fpr > x)
    if after.size == 0:
        return float(tpr[-1])
    i = int(after[0])
    x0, x1, y0, y1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def roc_figure(evaluation: Any) -> Figure:
    """The ROC curve, the pAUC region (FPR <= max_fpr) shaded, and a zoom on low FPR."""
    ev = _eval_dict(evaluation)
    fpr = np.asarray(ev["roc"]["fpr"], dtype=float)
    tpr = np.asarray(ev["roc"]["tpr"], dtype=float)
    max_fpr = float(ev["max_fpr"])
    fig = _figure(9.5, 4.4)
    ax, az = fig.subplots(1, 2)
    for a, xmax in ((ax, 1.0), (az, min(1.0, max(4 * max_fpr, 0.1)))):
        a.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        a.plot(fpr, tpr, color=_Q_COLOR, linewidth=2, label=f"AWM score (AUC {ev['auc']:.3f})")
        # Shade under the curve for FPR <= max_fpr, cut at max_fpr by interpolation.
        keep = fpr <= max_fpr
        xs = np.r_[fpr[keep], max_fpr]
        ys = np.r_[tpr[keep], _tpr_at(fpr, tpr, max_fpr)]
        a.fill_between(xs, 0, ys, color=_Q_COLOR, alpha=0.25, step=None, label=f"pAUC region (FPR <= {max_fpr:g})")
        a.axvline(max_fpr, color=_Q_COLOR, linestyle="--", linewidth=0.8)
        a.set_xlim(-0.005 * xmax, xmax)
        a.set_ylim(-0.01, 1.02)
        a.set_xlabel("false positive rate (independent pairs called related)")
        a.grid(alpha=0.3)
    ax.set_ylabel("true positive rate (related pairs found)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"ROC: {ev['n_related']} related vs {ev['n_independent']} independent pairs", fontsize=10)
    az.set_title(
        f"low FPR: pAUC {ev['pauc']:.3f} (McClish), TPR@{ev['fpr_target']:.0%} FPR {ev['tpr_at_fpr']:.3f}",
        fontsize=10,
    )
    return fig


def plot_roc(evaluation: Any, path: str | Path) -> Path:
    """Write ``roc.png``-style figure of an :class:`awmtrace.evaluate.Evaluation` (or its dict)."""
    return _save(roc_figure(evaluation), path)


def scores_figure(evaluation: Any) -> Figure:
    """Scores of related and independent pairs: linear axis, and a symlog axis that shows the small ones apart."""
    ev = _eval_dict(evaluation)
    pos = np.array([r["score"] for r in ev["pairs"] if r["label"] == "related"], dtype=float)
    neg = np.array([r["score"] for r in ev["pairs"] if r["label"] == "independent"], dtype=float)
    thr = ev["threshold"]["threshold"]
    fig = _figure(9.5, 4.0)
    axes = fig.subplots(2, 1, sharey=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, scale in zip(axes, ("linear", "symlog"), strict=True):
        for values, y, color, name in ((pos, 1.0, _POS_COLOR, "related"), (neg, 0.0, _NEG_COLOR, "independent")):
            jitter = rng.uniform(-0.18, 0.18, values.size)
            ax.scatter(values, y + jitter, s=18, color=color, alpha=0.75, edgecolors="none", label=f"{name} ({values.size})")
        ax.axvline(thr, color="black", linestyle="--", linewidth=1, label=f"threshold {thr:.4g}")
        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=1e-2)
            ax.set_xlabel("AWM score (symmetric log scale, linear below 0.01)")
        else:
            ax.set_xlabel("AWM score")
        ax.set_yticks([0, 1], ["independent", "related"])
        ax.set_ylim(-0.5, 1.5)
        ax.grid(alpha=0.3, axis="x")
    margin = ev["threshold"]["margin"]
    axes[0].set_title(f"score distributions; margin (lowest related - highest independent) = {margin:.4g}", fontsize=10)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    return fig


def plot_scores(evaluation: Any, path: str | Path) -> Path:
    """Write the score-distribution figure of an evaluation as a PNG."""
    return _save(scores_figure(evaluation), path)


_VERDICT_COLORS = {"related": _POS_COLOR, "inconclusive": "#e6a817", "independent": _NEG_COLOR}


def stress_figure(report: dict[str, Any]) -> Figure:
    """``awm stress`` as horizontal bars: each transform's score against the original, coloured by verdict.

    ``report`` is ``StressReport.to_dict()``. Function-preserving transforms are
    marked with their check; the dotted line is the score at the 'related' z.
    """
    rows = report.get("transforms") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not rows:
        raise FormatError("stress report has no 'transforms' to plot")
    fig = _figure(8.0, 1.2 + 0.32 * len(rows))
    ax = fig.subplots(1, 1)
    y = np.arange(len(rows))[::-1]
    scores = np.array([r.get("score") if isinstance(r.get("score"), int | float) else np.nan for r in rows], dtype=float)
    colors = [_VERDICT_COLORS.get(str(r.get("verdict")), "grey") for r in rows]
    ax.barh(y, np.nan_to_num(scores), color=colors, height=0.7)
    labels = []
    for r in rows:
        mark = ""
        if r.get("function_preserving"):
            mark = " [fp, check ok]" if r.get("check_passed") else " [fp, CHECK FAILED]"
        labels.append(f"{r.get('name')}{mark}")
    ax.set_yticks(y, labels, fontsize=8)
    for yi, s, r in zip(y, scores, rows, strict=True):
        ax.annotate(
            f"{s:.3f}  z {fmt_num(r.get('z'), 1)}",
            (max(float(np.nan_to_num(s)), 0.0), yi),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    null = report.get("null") or {}
    z_rel = (null.get("thresholds") or {}).get("related", 5.0)
    title = f"awm stress: {short_name(report.get('model'))} (red: related, yellow: inconclusive, green: independent)"
    if isinstance(null.get("mean"), int | float) and isinstance(null.get("std"), int | float):
        cut = null["mean"] + z_rel * null["std"]
        ax.axvline(cut, color="black", linestyle=":", linewidth=1)
        title += f"\ndotted: score at z = {z_rel:g} ({cut:.3f}); fp: function-preserving, proven on layer 0"
    ax.set_xlim(min(0.0, float(np.nanmin(scores)) - 0.02), 1.18)
    ax.set_xlabel("AWM score of the transformed copy against the original")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=9)
    return fig


def plot_stress(report: dict[str, Any], path: str | Path) -> Path:
    """Write the :func:`stress_figure` of a stored ``awm stress`` report at ``path`` (png, svg or pdf by extension)."""
    return _save(stress_figure(report), path)
