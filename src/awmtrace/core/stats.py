"""Scores to evidence: z-scores, p-values, the verdict, and many tests at once.

A null model is a distribution of AWM scores of independent model pairs
(:class:`awmtrace.types.NullModel`, loaded from data files by
:mod:`awmtrace.nulls`). Derived models score high, so every test here is
one-sided (upper tail).

Two p-values answer the same question in two ways:

* ``normal_p_value``: ``P(Z >= z)`` for a standard normal. It assumes the
  null scores are normal and extrapolates far past the observed pairs: with
  90 null pairs nothing beyond ``z ~ 2.5`` was ever seen.
* ``empirical_p_value``: ``(k + 1) / (n + 1)`` with ``k`` of ``n`` raw null
  scores at or above the score (the add-one estimate of North, Curtis & Sham
  2002, valid without any distributional assumption). It can never be
  smaller than ``1 / (n + 1)``, its resolution.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from awmtrace.errors import StatsError, UsageError
from awmtrace.types import NullModel, Verdict

__all__ = [
    "Z_RELATED",
    "Z_INCONCLUSIVE",
    "ALPHA",
    "Assessment",
    "z_score",
    "normal_p_value",
    "empirical_p_value",
    "empirical_resolution",
    "verdict",
    "assess",
    "rescore",
    "adjust_p_values",
    "bonferroni_z",
    "multiple_comparison_note",
]

# Default decision thresholds on z. With the paper's null (mean 0.00375,
# std 0.0028) z >= 5 means a score above ~0.0178; the weakest related pair the
# paper reports (Llama-3-8B -> Llama-3.2-1B) has z = 12.1.
Z_RELATED = 5.0
Z_INCONCLUSIVE = 3.0
#: Family-wise error rate used for the multiple-comparison note.
ALPHA = 0.05


def z_score(score: float, null: NullModel) -> float:
    """``(score - mean) / std`` under ``null``."""
    if not (null.std > 0 and math.isfinite(null.std)):
        raise StatsError(f"null model {null.name!r} has no spread (std={null.std}); z is undefined")
    if not math.isfinite(score):
        raise StatsError(f"score {score} is not a finite number; z is undefined")
    return (score - null.mean) / null.std


def normal_p_value(z: float) -> float:
    """Upper-tail p-value ``P(Z >= z)`` of a standard normal (0.0 once it underflows, z > ~38)."""
    # erfc keeps full relative precision far into the tail (scipy.stats would cost ~1 s of import).
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def empirical_p_value(score: float, null_scores: Sequence[float] | np.ndarray) -> float | None:
    """``(k + 1) / (n + 1)`` with ``k`` of the ``n`` null scores at or above ``score``; ``None`` without raw scores.

    ``null_scores``: ``(n,)``. Ties count as "at or above", so the value is
    conservative. Its resolution is ``1 / (n + 1)``: it can never be smaller.
    """
    scores = np.asarray(null_scores, dtype=np.float64)
    if scores.size == 0:
        return None
    k = int(np.count_nonzero(scores >= score))
    return (k + 1) / (scores.size + 1)


def empirical_resolution(n: int) -> float | None:
    """The smallest empirical p-value ``n`` raw null scores can give: ``1 / (n + 1)``; ``None`` for ``n = 0``."""
    return 1.0 / (n + 1) if n > 0 else None


def verdict(z: float, z_related: float = Z_RELATED, z_inconclusive: float = Z_INCONCLUSIVE) -> Verdict:
    """Label a z-score: ``related`` at or above ``z_related``, ``independent`` below ``z_inconclusive``.

    The returned :class:`Verdict` names the rule and carries the thresholds it used.
    """
    if not (math.isfinite(z_related) and math.isfinite(z_inconclusive)):
        raise UsageError(f"z thresholds must be finite numbers, got related {z_related}, inconclusive {z_inconclusive}")
    if z_inconclusive > z_related:
        raise UsageError(
            f"thresholds out of order: inconclusive {z_inconclusive:g} > related {z_related:g}; pass z_inconclusive <= z_related"
        )
    if not math.isfinite(z):
        raise StatsError(f"z = {z} is not a finite number; no verdict can be given")
    rule = f"related if z >= {z_related:g}; inconclusive if {z_inconclusive:g} <= z < {z_related:g}; else independent"
    thresholds = {"related": float(z_related), "inconclusive": float(z_inconclusive)}
    if z >= z_related:
        return Verdict("related", rule, "z", thresholds)
    if z >= z_inconclusive:
        return Verdict("inconclusive", rule, "z", thresholds)
    return Verdict("independent", rule, "z", thresholds)


@dataclass(frozen=True)
class Assessment:
    """What a score means under one null: z, both p-values, the verdict."""

    z: float
    p_value: float
    p_empirical: float | None
    p_empirical_resolution: float | None
    verdict: Verdict


def assess(score: float, null: NullModel, z_related: float = Z_RELATED, z_inconclusive: float = Z_INCONCLUSIVE) -> Assessment:
    """z, normal-tail p, empirical p (when ``null`` holds raw scores) and the verdict of ``score``."""
    z = z_score(score, null)
    return Assessment(
        z=z,
        p_value=normal_p_value(z),
        p_empirical=empirical_p_value(score, null.scores),
        p_empirical_resolution=empirical_resolution(len(null.scores)),
        verdict=verdict(z, z_related, z_inconclusive),
    )


def rescore(
    result: dict[str, Any],
    null: NullModel,
    z_related: float | None = None,
    z_inconclusive: float | None = None,
) -> dict[str, Any]:
    """A copy of a stored result (``PairResult.to_dict()``) with z, p-values and verdict under another null.

    Only the stored ``score`` is used: no weights are read. Thresholds default
    to the ones the stored verdict used (else :data:`Z_RELATED` /
    :data:`Z_INCONCLUSIVE`).
    """
    try:
        score = float(result["score"])
    except (KeyError, TypeError, ValueError):
        raise StatsError("result has no numeric 'score'; cannot re-score it under another null") from None
    stored = ((result.get("verdict") or {}).get("thresholds")) or {}
    zr = float(stored.get("related", Z_RELATED)) if z_related is None else z_related
    zi = float(stored.get("inconclusive", Z_INCONCLUSIVE)) if z_inconclusive is None else z_inconclusive
    a = assess(score, null, zr, zi)
    out = copy.deepcopy(result)
    out["z"] = a.z
    out["p_value"] = a.p_value
    out["p_empirical"] = a.p_empirical
    out["verdict"] = a.verdict.to_dict()
    out["null"] = null.to_dict()
    return out


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """p-values adjusted for testing ``m`` pairs at once (family-wise error control).

    ``p_values``: ``(m,)``; returns ``(m,)`` in the same order.
    ``bonferroni``: ``min(1, m p)``. ``holm`` (Holm 1979, step-down): sort
    ascending, ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``; never
    larger than Bonferroni, same guarantee.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise UsageError(f"p-values must be a flat list, got shape {p.shape}")
    if p.size and (np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1)):
        raise StatsError("p-values must lie in [0, 1]")
    m = p.size
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method != "holm":
        raise UsageError(f"unknown adjustment {method!r}; choose 'holm' or 'bonferroni'")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def bonferroni_z(m: int, alpha: float = ALPHA) -> float:
    """The z a single pair needs so that ``m`` pairs tested together keep family-wise error ``alpha``."""
    if m < 1:
        raise UsageError(f"number of tests must be at least 1, got {m}")
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha}")
    return -NormalDist().inv_cdf(alpha / m)


def multiple_comparison_note(m: int, alpha: float = ALPHA, z_related: float = Z_RELATED) -> str | None:
    """One sentence on what testing ``m`` pairs at once does to the ``related`` rule; ``None`` for one pair.

    Under the normal null, the chance that any of ``m`` independent pairs
    crosses ``z_related`` is at most ``m * P(Z >= z_related)`` (Bonferroni).
    """
    if m <= 1:
        return None
    z_needed = bonferroni_z(m, alpha)
    p_rule = normal_p_value(z_related)
    fwer = min(1.0, m * p_rule)
    head = (
        f"{m} pairs tested at once: to keep the chance of any false 'related' call below {alpha:g} "
        f"(Bonferroni), a pair needs p < {alpha / m:.2g}, i.e. z >= {z_needed:.2f}; "
    )
    if z_related >= z_needed:
        return head + (
            f"the rule z >= {z_related:g} is stricter (family-wise false-positive chance <= {fwer:.1e} "
            "under the normal null). Holm-adjusted p-values are given per pair."
        )
    return head + (
        f"the rule z >= {z_related:g} is looser (family-wise false-positive chance up to {fwer:.2g}); read the Holm-adjusted p-values."
    )
