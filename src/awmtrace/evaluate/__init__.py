"""How well scores separate related from independent pairs, from stored results (never weights).

:mod:`~awmtrace.evaluate.loading` reads results stores, results files and
labels files; :mod:`~awmtrace.evaluate.evaluation` turns labelled pairs into
ROC/AUC/pAUC, thresholds and the |z| table (maths in :mod:`awmtrace.core.roc`).
Each pair needs a label, ``related`` (positive) or ``independent``
(negative), from the suite that produced it or from a labels file.
"""

from awmtrace.core.roc import (
    FPR_TARGET,
    MAX_FPR,
    auc,
    auc_mann_whitney,
    best_threshold,
    mcclish,
    partial_auc,
    roc_curve,
    tpr_at_fpr,
)
from awmtrace.evaluate.evaluation import Evaluation, evaluate, evaluate_path
from awmtrace.evaluate.loading import PairEntry, load_labels, load_pairs, normalize_label

__all__ = [
    "PairEntry",
    "Evaluation",
    "load_pairs",
    "load_labels",
    "normalize_label",
    "roc_curve",
    "auc",
    "auc_mann_whitney",
    "partial_auc",
    "mcclish",
    "tpr_at_fpr",
    "best_threshold",
    "evaluate",
    "evaluate_path",
    "MAX_FPR",
    "FPR_TARGET",
]
