"""ROC maths for "related when score >= threshold": the curve, AUC, partial AUC, TPR at a fixed FPR, best threshold.

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

from collections.abc import Sequence
from typing import Any

import numpy as np

from awmtrace.errors import StatsError, UsageError

__all__ = [
    "MAX_FPR",
    "FPR_TARGET",
    "roc_curve",
    "auc",
    "auc_mann_whitney",
    "partial_auc",
    "mcclish",
    "tpr_at_fpr",
    "best_threshold",
]

#: Upper FPR of the partial AUC, as in the paper's ROC figure.
MAX_FPR = 0.05
#: FPR at which the TPR is reported.
FPR_TARGET = 0.01


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
