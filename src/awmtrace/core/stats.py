"""Scores to evidence: z-scores, p-values and the verdict.

A null model is a distribution of AWM scores of independent model pairs
(:class:`awmtrace.types.NullModel`, loaded from data files by
:mod:`awmtrace.nulls`). Derived models score high, so every test here is
one-sided (upper tail).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from awmtrace.errors import StatsError
from awmtrace.types import NullModel, Verdict

__all__ = [
    "Z_RELATED",
    "Z_INCONCLUSIVE",
    "z_score",
    "normal_p_value",
    "empirical_p_value",
    "verdict",
]

# Default decision thresholds on z. With the paper's null (mean 0.00375,
# std 0.0028) z >= 5 means a score above ~0.0178; the weakest related pair the
# paper reports (Llama-3-8B -> Llama-3.2-1B) has z = 12.1.
Z_RELATED = 5.0
Z_INCONCLUSIVE = 3.0


def z_score(score: float, null: NullModel) -> float:
    """``(score - mean) / std`` under ``null``."""
    if not (null.std > 0 and math.isfinite(null.std)):
        raise StatsError(f"null model {null.name!r} has no spread (std={null.std}); z is undefined")
    return (score - null.mean) / null.std


def normal_p_value(z: float) -> float:
    """Upper-tail p-value ``P(Z >= z)`` of a standard normal."""
    return float(norm.sf(z))


def empirical_p_value(score: float, null_scores: tuple[float, ...] | np.ndarray) -> float | None:
    """``(k + 1) / (n + 1)`` with ``k`` null scores at or above ``score``; ``None`` without raw scores.

    Its resolution is ``1 / (n + 1)``: it can never be smaller than that.
    """
    scores = np.asarray(null_scores, dtype=np.float64)
    if scores.size == 0:
        return None
    k = int(np.count_nonzero(scores >= score))
    return (k + 1) / (scores.size + 1)


def verdict(z: float, z_related: float = Z_RELATED, z_inconclusive: float = Z_INCONCLUSIVE) -> Verdict:
    """Label a z-score: ``related`` at or above ``z_related``, ``independent`` below ``z_inconclusive``."""
    if z_inconclusive > z_related:
        raise StatsError(f"thresholds out of order: inconclusive {z_inconclusive} > related {z_related}")
    rule = f"related if z >= {z_related:g}; inconclusive if {z_inconclusive:g} <= z < {z_related:g}; else independent"
    if z >= z_related:
        return Verdict("related", rule)
    if z >= z_inconclusive:
        return Verdict("inconclusive", rule)
    return Verdict("independent", rule)
