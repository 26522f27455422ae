"""How well scores separate related from independent pairs: ROC, AUC, pAUC, thresholds, |z| tables.

Everything here works on stored results (``PairResult.to_dict()``), never on
weights: a results store written by ``awm suite run``, or a JSON / JSON-lines
file of results (bare results, store records with a ``result`` field, or the
output of ``awm demo --json``). Each pair needs a label, ``related``
(positive) or ``independent`` (negative), from the suite that produced it or
from a labels file.

Definitions (higher score = more likely related; a pair is called related
when its score is at or above the threshold):

* ROC: one point ``(FPR, TPR)`` per distinct score, from ``(0, 0)``; tied
  scores of both classes move the curve diagonally, so the trapezoidal AUC
  equals the Mann-Whitney probability ``P(pos > neg) + P(pos = neg) / 2``.
* pAUC: the area under that curve for ``FPR <= max_fpr`` (0.05), the curve
  interpolated linearly at ``max_fpr``. Reported three ways: ``pauc_raw``
  (in ``[0, max_fpr]``), ``pauc_normalized`` (raw / max_fpr, in ``[0, 1]``)
  and ``pauc`` = McClish's standardisation ``0.5 * (1 + (raw - m) / (M - m))``
  with ``m = max_fpr² / 2`` (chance diagonal) and ``M = max_fpr`` (perfect):
  0.5 for chance, 1 for perfect separation. The last is what scikit-learn's
  ``roc_auc_score(..., max_fpr=0.05)`` returns (McClish 1989, Med. Decis.
  Making 9:190), the usual choice in papers that plot ROC curves with sklearn.
* TPR at 1% FPR: the best TPR of a threshold whose FPR is at most 1%. With
  fewer than 100 negatives that means FPR = 0 (no negative at or above it).
* Best threshold: the midpoint of the gap when every positive outscores every
  negative (margin > 0), else the score maximising ``TPR - FPR`` (Youden).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.core import stats
from awmtrace.errors import FormatError, InputNotFound, StatsError, UsageError
from awmtrace.nulls import is_cross_size, load_null
from awmtrace.report.schema import finite_json
from awmtrace.types import NullModel

__all__ = [
    "PairEntry",
    "Evaluation",
    "load_pairs",
    "load_labels",
    "roc_curve",
    "auc",
    "auc_mann_whitney",
    "partial_auc",
    "mcclish",
    "tpr_at_fpr",
    "best_threshold",
    "evaluate",
    "evaluate_path",
    "write_evaluation",
    "MAX_FPR",
    "FPR_TARGET",
]

log = logging.getLogger("awmtrace.evaluate")

#: Upper FPR of the partial AUC, as in the paper's ROC figure.
MAX_FPR = 0.05
#: FPR at which the TPR is reported.
FPR_TARGET = 0.01

_SQLITE_MAGIC = b"SQLite format 3\x00"
_POSITIVE = {"related", "positive", "pos", "1", "true", "yes", "derived"}
_NEGATIVE = {"independent", "unrelated", "negative", "neg", "0", "false", "no"}


@dataclass(frozen=True)
class PairEntry:
    """One stored comparison, whatever file it came from. ``result`` is ``PairResult.to_dict()``."""

    name_a: str
    name_b: str
    result: dict[str, Any]
    label: str | None = None  # "related" | "independent" | None
    suite: str | None = None
    category: str | None = None
    tool_version: str = ""
    created_at: str | None = None

    @property
    def score(self) -> float:
        return float(self.result["score"])

    @property
    def pair(self) -> str:
        return f"{self.name_a} vs {self.name_b}"


def normalize_label(value: Any, where: str) -> str:
    """``related`` or ``independent`` from the spellings people use (1/0, true/false, positive/negative)."""
    text = str(value).strip().lower()
    if isinstance(value, bool):
        text = "true" if value else "false"
    if text in _POSITIVE:
        return "related"
    if text in _NEGATIVE:
        return "independent"
    raise FormatError(f"{where}: label {value!r} is neither related (1, positive) nor independent (0, negative)")


def _model_name(summary: Any) -> str | None:
    if isinstance(summary, dict):
        name = summary.get("spec") or summary.get("path")
        return str(name) if name else None
    return None


def _check_result(result: Any, where: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise FormatError(f"{where}: expected a result object, found {type(result).__name__}")
    score = result.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise FormatError(f"{where}: result has no finite numeric 'score' (found {score!r})")
    return result


def _entry_from_item(item: Any, where: str) -> PairEntry:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: expected a JSON object, found {type(item).__name__}")
    if isinstance(item.get("result"), dict):
        result = _check_result(item["result"], where)
        meta = item
    elif "score" in item:
        result = _check_result(item, where)
        meta = item
    else:
        raise FormatError(f"{where}: neither a result (no 'score') nor a record with a 'result' object")
    label = meta.get("label")
    if label is None and isinstance(meta.get("expected_related"), bool):  # `awm demo --json`
        label = meta["expected_related"]
    name_a = meta.get("name_a") or _model_name(result.get("a"))
    name_b = meta.get("name_b") or meta.get("member") or _model_name(result.get("b"))
    if not name_a or not name_b:
        raise FormatError(f"{where}: cannot tell which models were compared (no name_a/name_b and no a/b spec in the result)")
    tool = result.get("tool") if isinstance(result.get("tool"), dict) else {}
    return PairEntry(
        name_a=str(name_a),
        name_b=str(name_b),
        result=result,
        label=None if label is None else normalize_label(label, where),
        suite=meta.get("suite"),
        category=meta.get("category"),
        tool_version=str(meta.get("tool_version") or tool.get("version") or ""),
        created_at=meta.get("created_at"),
    )


def _read_results_file(path: Path) -> list[PairEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a text file; expected a results store (SQLite), JSON or JSON lines") from None
    stripped = text.strip()
    if not stripped:
        raise StatsError(f"{path}: empty file, no results to read")
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        if isinstance(data, dict) and isinstance(data.get("results"), list):  # {"results": [...]}
            data = data["results"]
        items = data if isinstance(data, list) else [data]
        where = [f"{path}: item {i + 1}" for i in range(len(items))]
    else:
        items, where = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}: line {lineno} is not JSON ({exc.msg}); expected a JSON list or one result per line") from None
            where.append(f"{path}: line {lineno}")
    if not items:
        raise StatsError(f"{path}: holds an empty list, no results to read")
    return [_entry_from_item(item, w) for item, w in zip(items, where, strict=True)]


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def load_pairs(source: Any, suites: Iterable[str] | None = None) -> list[PairEntry]:
    """Stored results as :class:`PairEntry` rows, from a results store or a results file.

    ``source``: a :class:`awmtrace.store.ResultsStore`, the path of one (an
    SQLite file), or a JSON / JSON-lines file. ``suites``: keep only these
    suites (for files, entries without a suite are kept only when no suite is
    asked for). The order is the store's (oldest first) or the file's.
    """
    wanted = set(suites or ())
    if hasattr(source, "records"):
        entries = _from_store(source)
        where = str(getattr(source, "path", "the results store"))
    else:
        path = Path(source).expanduser()
        where = str(path)
        if path.is_dir():
            raise InputNotFound(f"{path}: is a folder; pass a results store (.sqlite) or a JSON / JSON-lines results file")
        if not path.is_file():
            raise InputNotFound(f"{path}: no such results store or results file")
        if _is_sqlite(path):
            from awmtrace.store import ResultsStore

            with ResultsStore(path, create=False) as store:
                entries = _from_store(store)
        else:
            entries = _read_results_file(path)
    if not entries:
        raise StatsError(f"{where}: holds no results; run `awm suite run` (or `awm compare --json`) first")
    if wanted:
        kept = [e for e in entries if e.suite in wanted]
        if not kept:
            present = sorted({str(e.suite) for e in entries})
            raise StatsError(f"{where}: no results of suite(s) {', '.join(sorted(wanted))}; it holds {', '.join(present)}")
        entries = kept
    return entries


def _from_store(store: Any) -> list[PairEntry]:
    out = []
    for rec in store.records():
        where = f"{getattr(store, 'path', 'store')}: {rec.name_a} vs {rec.name_b}"
        out.append(
            PairEntry(
                name_a=rec.name_a,
                name_b=rec.name_b,
                result=_check_result(rec.result, where),
                label=None if rec.label is None else normalize_label(rec.label, where),
                suite=rec.suite,
                category=getattr(rec, "category", None),
                tool_version=str(getattr(rec, "tool_version", "") or ""),
                created_at=getattr(rec, "created_at", None),
            )
        )
    return out


def load_labels(path: str | Path) -> dict[tuple[str, str], str]:
    """A labels file: which pairs are related and which independent.

    CSV with a header naming columns ``a``, ``b``, ``label`` (or ``name_a``,
    ``name_b``), or JSON: a list of ``{"a": ..., "b": ..., "label": ...}``
    objects, optionally under ``"pairs"``. Labels: ``related``/``independent``
    (also 1/0, true/false, positive/negative).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFound(f"{path}: labels file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: labels file is not text (expected CSV or JSON)") from None
    rows: list[tuple[Any, Any, Any, str]] = []
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        items = data.get("pairs") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise FormatError(f'{path}: expected a list of {{"a", "b", "label"}} objects (or one under "pairs")')
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise FormatError(f"{path}: entry {i} is not an object with a, b and label")
            rows.append((item.get("a", item.get("name_a")), item.get("b", item.get("name_b")), item.get("label"), f"{path}: entry {i}"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        col_a = fields.get("a") or fields.get("name_a")
        col_b = fields.get("b") or fields.get("name_b")
        col_l = fields.get("label")
        if not (col_a and col_b and col_l):
            raise FormatError(f"{path}: CSV header must name columns a, b and label (found {', '.join(reader.fieldnames or []) or 'none'})")
        for i, row in enumerate(reader, 2):
            rows.append((row.get(col_a), row.get(col_b), row.get(col_l), f"{path}: line {i}"))
    labels: dict[tuple[str, str], str] = {}
    for a, b, label, where in rows:
        if not a or not b or label is None or str(label).strip() == "":
            raise FormatError(f"{where}: needs a, b and label")
        labels[(str(a).strip(), str(b).strip())] = normalize_label(label, where)
    if not labels:
        raise FormatError(f"{path}: labels file lists no pairs")
    return labels


def _check_binary(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise UsageError(f"scores {s.shape} and labels {y.shape} must be flat and of equal length")
    if not np.all(np.isfinite(s)):
        raise StatsError("scores must be finite numbers")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise StatsError(f"need both related and independent pairs for a ROC curve; found {n_pos} related and {n_neg} independent")
    return s, y


def roc_curve(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of "related when score >= threshold".

    ``scores``, ``positive``: ``(n,)``. Returns ``fpr``, ``tpr``,
    ``thresholds``, each ``(k + 1,)`` for ``k`` distinct scores: the first
    point is ``(0, 0)`` at threshold ``+inf``, then one point per distinct
    score, descending. Tied scores of both classes become one diagonal step.
    """
    s, y = _check_binary(scores, positive)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: all of them cross the threshold together.
    last = np.flatnonzero(np.r_[np.diff(s_sorted) != 0, True])
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under a ROC curve given by points sorted by FPR (``(k,)`` each)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def auc_mann_whitney(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """``P(pos > neg) + P(pos = neg) / 2`` over all positive-negative pairs (the AUC, by counting)."""
    s, y = _check_binary(scores, positive)
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def partial_auc(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Raw area under the ROC curve for ``0 <= FPR <= max_fpr`` (in ``[0, max_fpr]``).

    ``fpr``, ``tpr``: ``(k,)``, sorted by FPR, from ``(0, 0)``; the segment
    crossing ``max_fpr`` is cut by linear interpolation.
    """
    if not 0 < max_fpr <= 1:
        raise UsageError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    area = 0.0
    for x0, y0, x1, y1 in zip(fpr[:-1], tpr[:-1], fpr[1:], tpr[1:], strict=True):
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2.0
        else:
            y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2.0
    return float(area)


def mcclish(raw_pauc: float, max_fpr: float = MAX_FPR) -> float:
    """McClish's standardised pAUC: 0.5 on the chance diagonal, 1 for a perfect curve.

    ``0.5 * (1 + (raw - m) / (M - m))`` with ``m = max_fpr² / 2`` (area under
    the diagonal up to ``max_fpr``) and ``M = max_fpr`` (the whole strip);
    the same as scikit-learn's ``roc_auc_score(..., max_fpr=max_fpr)``.
    """
    low, high = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1.0 + (raw_pauc - low) / (high - low))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, target: float = FPR_TARGET) -> tuple[float, float, float]:
    """``(tpr, fpr, threshold)`` of the best ROC point with FPR <= ``target`` (an achievable threshold)."""
    ok = np.flatnonzero(fpr <= target + 1e-12)
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(fpr[best]), float(thresholds[best])


def best_threshold(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """The threshold that separates the classes best, its margin and how it was chosen.

    Returns ``threshold``, ``rule``, ``margin`` (lowest positive minus
    highest negative: > 0 means perfect separation), ``separable``, and the
    ``tpr`` / ``fpr`` of "related when score >= threshold".
    """
    s, y = _check_binary(scores, positive)
    lo_pos, hi_neg = float(s[y].min()), float(s[~y].max())
    margin = lo_pos - hi_neg
    if margin > 0:
        threshold = (lo_pos + hi_neg) / 2.0
        rule = "midpoint between the highest independent and the lowest related score"
    else:
        fpr, tpr, thresholds = roc_curve(s, y)
        j = tpr - fpr
        k = int(np.argmax(j[1:])) + 1  # skip the +inf point
        threshold = float(thresholds[k])
        rule = "score maximising TPR - FPR (Youden's J); the classes overlap"
    tpr_t = float(np.mean(s[y] >= threshold))
    fpr_t = float(np.mean(s[~y] >= threshold))
    return {"threshold": threshold, "rule": rule, "margin": margin, "separable": margin > 0, "tpr": tpr_t, "fpr": fpr_t}


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
    unique: dict[tuple[Any, str, str], PairEntry] = {}
    n_in = 0
    for e in pairs:
        n_in += 1
        unique[(e.suite, e.name_a, e.name_b)] = e
    if n_in == 0:
        raise StatsError("no results to evaluate")
    if n_in > len(unique):
        notes.append(f"{n_in - len(unique)} repeated result(s) of the same pair: the last stored one counts")
    used_labels: set[tuple[str, str]] = set()
    labelled: list[tuple[PairEntry, str]] = []
    missing: list[str] = []
    for e in unique.values():
        label = e.label
        if labels is not None:
            from_file = _lookup(labels, e.name_a, e.name_b)
            if from_file is not None:
                label = from_file
                used_labels.add((e.name_a, e.name_b) if (e.name_a, e.name_b) in labels else (e.name_b, e.name_a))
        if label is None:
            missing.append(e.pair)
        else:
            labelled.append((e, label))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        notes.append(f"{len(missing)} pair(s) without a label left out: {shown}")
    if labels is not None:
        unused = [f"{a} vs {b}" for (a, b) in labels if (a, b) not in used_labels]
        if unused:
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            notes.append(f"{len(unused)} labelled pair(s) have no stored result: {shown}")
    if not labelled:
        raise StatsError(f"none of the {len(unique)} results has a label; pass --labels FILE (CSV or JSON with a, b, label)")
    rows = []
    nulls_seen = set()
    for e, label in labelled:
        r = stats.rescore(e.result, null) if null is not None else e.result
        if r.get("z") is None:
            r = stats.rescore(e.result, _default_null())
            notes.append(f"{e.pair}: stored result has no z; scored under the default null")
        nd = r.get("null") or {}
        nulls_seen.add((nd.get("name"), nd.get("mean"), nd.get("std")))
        rows.append(
            {
                "suite": e.suite,
                "category": e.category,
                "a": e.name_a,
                "b": e.name_b,
                "label": label,
                "score": float(r["score"]),
                "z": _float(r.get("z")),
                "abs_z": abs(r["z"]) if _float(r.get("z")) is not None else None,
                "p_value": _float(r.get("p_value")),
                "p_empirical": _float(r.get("p_empirical")),
                "verdict": (r.get("verdict") or {}).get("label"),
                "cross_size": is_cross_size(r),
            }
        )
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
    area = auc(fpr, tpr)
    raw = partial_auc(fpr, tpr, max_fpr)
    t_tpr, t_fpr, _ = tpr_at_fpr(fpr, tpr, thresholds, fpr_target)
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
    threshold = best_threshold(scores, positive)
    if len(nulls_seen) == 1:
        name, mean, std = next(iter(nulls_seen))
        if isinstance(mean, int | float) and isinstance(std, int | float) and std > 0:
            threshold["z"] = (threshold["threshold"] - mean) / std
            threshold["null"] = name
    else:
        notes.append(f"results were scored under {len(nulls_seen)} different nulls; pass --null to compare z on one")
    p = np.array([r["p_value"] if r["p_value"] is not None else 1.0 for r in rows])
    holm = stats.adjust_p_values(p, "holm")
    for r, ph in zip(rows, holm, strict=True):
        r["p_holm"] = float(ph)
    m = len(rows)
    mc = {
        "m": m,
        "alpha": alpha,
        "method": "holm",
        "bonferroni_z": stats.bonferroni_z(m, alpha),
        "note": stats.multiple_comparison_note(m, alpha),
    }
    counts: dict[str, Counter[str]] = {"related": Counter(), "independent": Counter()}
    for r in rows:
        counts[r["label"]][str(r["verdict"])] += 1
    return Evaluation(
        n_related=n_pos,
        n_independent=n_neg,
        auc=area,
        pauc=mcclish(raw, max_fpr),
        pauc_raw=raw,
        pauc_normalized=raw / max_fpr,
        max_fpr=max_fpr,
        tpr_at_fpr=t_tpr,
        fpr_target=fpr_target,
        fpr_at_target=t_fpr,
        threshold=threshold,
        roc={
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [None if not math.isfinite(t) else float(t) for t in thresholds],
        },
        pairs=rows,
        null=null.to_dict() if null is not None else None,
        multiple_comparisons=mc,
        verdict_counts={k: dict(v) for k, v in counts.items()},
        notes=notes,
    )


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _default_null() -> NullModel:
    return load_null(None)


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


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write ``evaluation.json``, ``z_table.csv``, ``roc.png`` and ``scores.png`` into ``out_dir``."""
    from awmtrace.report.figures import plot_roc, plot_scores

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; pass a folder for the evaluation outputs")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "evaluation": out / "evaluation.json",
        "z_table": out / "z_table.csv",
        "roc": out / "roc.png",
        "scores": out / "scores.png",
    }
    paths["evaluation"].write_text(json.dumps(finite_json(evaluation.to_dict()), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with paths["z_table"].open("w", newline="", encoding="utf-8") as fh:
        cols = ["suite", "category", "a", "b", "score", "z", "abs_z", "p_value", "p_holm", "p_empirical", "verdict", "cross_size"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in evaluation.z_table:
            w.writerow(row)
    plot_roc(evaluation, paths["roc"])
    plot_scores(evaluation, paths["scores"])
    return paths
