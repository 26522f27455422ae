"""How well scores separate related from independent pairs: ROC, AUC, pAUC, thresholds, |z| tables.

Works on stored results (:mod:`awmtrace.evaluate.loading`), never on weights;
the ROC maths is :mod:`awmtrace.core.roc`, and the files an evaluation writes
are :func:`awmtrace.report.evaluation.write_evaluation`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.core import stats
from awmtrace.core.roc import FPR_TARGET, MAX_FPR, auc, best_threshold, mcclish, partial_auc, roc_curve, tpr_at_fpr
from awmtrace.errors import StatsError, UsageError
from awmtrace.evaluate.loading import PairEntry, load_labels, load_pairs
from awmtrace.nulls import is_cross_size, load_null
from awmtrace.types import NullModel

__all__ = ["Evaluation", "evaluate", "evaluate_path"]


@dataclass(frozen=True)
class Evaluation:
    """Separation of related and independent pairs by score, with the per-pair table.

    ``roc``: ``{"fpr", "tpr", "thresholds"}`` lists (first point at threshold
    ``None`` = +inf). ``pairs``: one row per labelled pair (suite, a, b,
    label, score, z, p_value, p_holm, p_empirical, verdict, cross_size).
    """

    n_related: int
    n_independent: int
    auc: float
    pauc: float
    pauc_raw: float
    pauc_normalized: float
    max_fpr: float
    tpr_at_fpr: float
    fpr_target: float
    fpr_at_target: float
    threshold: dict[str, Any]
    roc: dict[str, list[float | None]]
    pairs: list[dict[str, Any]]
    null: dict[str, Any] | None
    multiple_comparisons: dict[str, Any]
    verdict_counts: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)

    @property
    def z_table(self) -> list[dict[str, Any]]:
        """The related pairs, strongest |z| first (the paper's absolute z-score table)."""
        rows = [r for r in self.pairs if r["label"] == "related"]
        return sorted(rows, key=lambda r: -(r["abs_z"] if r["abs_z"] is not None else -math.inf))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_related": self.n_related,
            "n_independent": self.n_independent,
            "auc": self.auc,
            "pauc": self.pauc,
            "pauc_raw": self.pauc_raw,
            "pauc_normalized": self.pauc_normalized,
            "pauc_definition": (
                f"pauc: McClish-standardised area for FPR <= {self.max_fpr:g} (0.5 chance, 1 perfect; "
                "= sklearn roc_auc_score(max_fpr)); pauc_raw: the area itself; pauc_normalized: raw / max_fpr"
            ),
            "max_fpr": self.max_fpr,
            "tpr_at_fpr": self.tpr_at_fpr,
            "fpr_target": self.fpr_target,
            "fpr_at_target": self.fpr_at_target,
            "threshold": self.threshold,
            "roc": self.roc,
            "z_table": self.z_table,
            "pairs": self.pairs,
            "null": self.null,
            "multiple_comparisons": self.multiple_comparisons,
            "verdict_counts": self.verdict_counts,
            "notes": list(self.notes),
        }


def _lookup(labels: dict[tuple[str, str], str], a: str, b: str) -> str | None:
    # The AWM score is symmetric in its two models, so either order may be listed.
    return labels.get((a, b)) or labels.get((b, a))


def _shown(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _last_of_each_pair(pairs: Iterable[PairEntry], notes: list[str]) -> list[PairEntry]:
    unique: dict[tuple[Any, str, str], PairEntry] = {}
    n_in = 0
    for e in pairs:
        n_in += 1
        unique[(e.suite, e.name_a, e.name_b)] = e
    if n_in == 0:
        raise StatsError("no results to evaluate")
    if n_in > len(unique):
        notes.append(f"{n_in - len(unique)} repeated result(s) of the same pair: the last stored one counts")
    return list(unique.values())


def _labelled(entries: list[PairEntry], labels: dict[tuple[str, str], str] | None, notes: list[str]) -> list[tuple[PairEntry, str]]:
    """Each entry with its label (a labels file overrides the stored one); unlabelled entries are named in ``notes``."""
    used: set[tuple[str, str]] = set()
    labelled: list[tuple[PairEntry, str]] = []
    missing: list[str] = []
    for e in entries:
        label = e.label
        from_file = _lookup(labels, e.name_a, e.name_b) if labels is not None else None
        if labels is not None and from_file is not None:
            label = from_file
            used.add((e.name_a, e.name_b) if (e.name_a, e.name_b) in labels else (e.name_b, e.name_a))
        if label is None:
            missing.append(e.pair)
        else:
            labelled.append((e, label))
    if missing:
        notes.append(f"{len(missing)} pair(s) without a label left out: {_shown(missing)}")
    unused = [f"{a} vs {b}" for (a, b) in (labels or {}) if (a, b) not in used]
    if unused:
        notes.append(f"{len(unused)} labelled pair(s) have no stored result: {_shown(unused)}")
    if not labelled:
        raise StatsError(f"none of the {len(entries)} results has a label; pass --labels FILE (CSV or JSON with a, b, label)")
    return labelled


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _rows(labelled: list[tuple[PairEntry, str]], null: NullModel | None, notes: list[str]) -> tuple[list[dict[str, Any]], set[Any]]:
    """One table row per labelled pair, z and p under ``null`` when given; and the nulls the rows were scored under."""
    rows = []
    nulls_seen = set()
    for e, label in labelled:
        r = stats.rescore(e.result, null) if null is not None else e.result
        if r.get("z") is None:
            r = stats.rescore(e.result, load_null(None))
            notes.append(f"{e.pair}: stored result has no z; scored under the default null")
        nd = r.get("null") or {}
        nulls_seen.add((nd.get("name"), nd.get("mean"), nd.get("std")))
        z = _float(r.get("z"))
        rows.append(
            {
                "suite": e.suite,
                "category": e.category,
                "a": e.name_a,
                "b": e.name_b,
                "label": label,
                "score": float(r["score"]),
                "z": z,
                "abs_z": abs(z) if z is not None else None,
                "p_value": _float(r.get("p_value")),
                "p_empirical": _float(r.get("p_empirical")),
                "verdict": (r.get("verdict") or {}).get("label"),
                "cross_size": is_cross_size(r),
            }
        )
    return rows, nulls_seen


def _resolution_notes(n_neg: int, max_fpr: float, fpr_target: float) -> list[str]:
    notes = []
    if n_neg * fpr_target < 1:
        notes.append(
            f"with {n_neg} independent pairs the smallest non-zero FPR is 1/{n_neg} = {1 / n_neg:.3g} > {fpr_target:g}: "
            f"TPR at {fpr_target:.0%} FPR is the TPR with no independent pair called related"
        )
    if n_neg * max_fpr < 1:
        notes.append(
            f"with {n_neg} independent pairs the pAUC region (FPR <= {max_fpr:g}) holds no ROC step: it only "
            "measures the TPR reached before the first independent pair"
        )
    return notes


def _threshold(scores: np.ndarray, positive: np.ndarray, nulls_seen: set[Any], notes: list[str]) -> dict[str, Any]:
    """The best threshold, with its z when every row was scored under one null."""
    threshold = best_threshold(scores, positive)
    if len(nulls_seen) == 1:
        name, mean, std = next(iter(nulls_seen))
        if isinstance(mean, int | float) and isinstance(std, int | float) and std > 0:
            threshold["z"] = (threshold["threshold"] - mean) / std
            threshold["null"] = name
    else:
        notes.append(f"results were scored under {len(nulls_seen)} different nulls; pass --null to compare z on one")
    return threshold


def _multiple_comparisons(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Holm-adjusted p per row (``p_holm``, set in place) and the note on testing many pairs at once."""
    p = np.array([r["p_value"] if r["p_value"] is not None else 1.0 for r in rows])
    for r, ph in zip(rows, stats.adjust_p_values(p, "holm"), strict=True):
        r["p_holm"] = float(ph)
    m = len(rows)
    return {
        "m": m,
        "alpha": alpha,
        "method": "holm",
        "bonferroni_z": stats.bonferroni_z(m, alpha),
        "note": stats.multiple_comparison_note(m, alpha),
    }


def _verdict_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many pairs of each label got each verdict."""
    counts: dict[str, Counter[str]] = {"related": Counter(), "independent": Counter()}
    for r in rows:
        counts[r["label"]][str(r["verdict"])] += 1
    return {k: dict(v) for k, v in counts.items()}


def evaluate(
    pairs: Iterable[PairEntry],
    labels: dict[tuple[str, str], str] | None = None,
    null: NullModel | None = None,
    max_fpr: float = MAX_FPR,
    fpr_target: float = FPR_TARGET,
    alpha: float = stats.ALPHA,
) -> Evaluation:
    """ROC / AUC / pAUC / TPR at ``fpr_target`` / best threshold / |z| table of labelled pairs.

    ``labels`` (from :func:`load_labels`) override the labels stored with the
    pairs. Pairs without any label are left out and named in ``notes``;
    with a pair stored several times, the last one counts. ``null``: re-score
    z and p under this null (from the stored score); otherwise each result's
    own z is used.
    """
    if not 0 < max_fpr <= 1:
        raise UsageError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    if not 0 <= fpr_target < 1:
        raise UsageError(f"fpr_target must lie in [0, 1), got {fpr_target}")
    notes: list[str] = []
    labelled = _labelled(_last_of_each_pair(pairs, notes), labels, notes)
    rows, nulls_seen = _rows(labelled, null, notes)
    scores = np.array([r["score"] for r in rows])
    positive = np.array([r["label"] == "related" for r in rows])
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        only = "related" if n_neg == 0 else "independent"
        raise StatsError(
            f"all {len(rows)} labelled pairs are {only}; AUC and thresholds need both related and independent pairs "
            "(add an independent suite or pass --labels)"
        )
    fpr, tpr, thresholds = roc_curve(scores, positive)
    raw = partial_auc(fpr, tpr, max_fpr)
    t_tpr, t_fpr, _ = tpr_at_fpr(fpr, tpr, thresholds, fpr_target)
    notes += _resolution_notes(n_neg, max_fpr, fpr_target)
    threshold = _threshold(scores, positive, nulls_seen, notes)
    mc = _multiple_comparisons(rows, alpha)
    return Evaluation(
        n_related=n_pos,
        n_independent=n_neg,
        auc=auc(fpr, tpr),
        pauc=mcclish(raw, max_fpr),
        pauc_raw=raw,
        pauc_normalized=raw / max_fpr,
        max_fpr=max_fpr,
        tpr_at_fpr=t_tpr,
        fpr_target=fpr_target,
        fpr_at_target=t_fpr,
        threshold=threshold,
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [None if not math.isfinite(t) else float(t) for t in thresholds]},
        pairs=rows,
        null=null.to_dict() if null is not None else None,
        multiple_comparisons=mc,
        verdict_counts=_verdict_counts(rows),
        notes=notes,
    )


def evaluate_path(
    source: Any,
    labels: str | Path | None = None,
    suites: Iterable[str] | None = None,
    null: NullModel | str | Path | None = None,
    **options: Any,
) -> Evaluation:
    """:func:`evaluate` of a results store or results file, with an optional labels file and null."""
    entries = load_pairs(source, suites)
    label_map = load_labels(labels) if labels is not None else None
    null_model = null if isinstance(null, NullModel) or null is None else load_null(null)
    return evaluate(entries, label_map, null_model, **options)
