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

A null calibrated on 7B-class models says nothing about a pair of 32-wide
models: the score's spread under independence shrinks with the number of
samples (hidden dimensions). So every verdict also asks the *size-aware
permutation check*: how far the score lies outside the distribution it would
have if one model's hidden dimensions were shuffled. Its mean is 0 and its
variance exactly ``2 / (n (n - 3))`` per matrix (:mod:`awmtrace.core.cka`),
whatever the matrices. A pair is called related only when the null says so
*and* the permutation z (score / permutation sd) reaches :data:`Z_PERMUTATION`.
:func:`assess` is the one place where scores become z, p-values and verdicts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from awmtrace.core.cka import permutation_variance
from awmtrace.errors import StatsError, UsageError
from awmtrace.types import NullModel, Verdict

__all__ = [
    "Z_RELATED",
    "Z_INCONCLUSIVE",
    "Z_PERMUTATION",
    "ALPHA",
    "Assessment",
    "PermutationCheck",
    "permutation_sd",
    "permutation_check",
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
#: Permutation z a related call also needs. By Cantelli's inequality a score
#: with permutation mean 0 and sd s exceeds z*s with probability at most
#: 1 / (1 + z^2) whatever its distribution (heavy-tailed for low-rank
#: weights): 0.0099 at z = 10, so at most 1% of independent pairs of any size
#: and any weights pass. A perfect copy needs n(n-3)/2 >= 100, hidden >= 16.
Z_PERMUTATION = 10.0


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
    """Label a z-score under a null alone: ``related`` at or above ``z_related``, ``independent`` below ``z_inconclusive``.

    The returned :class:`Verdict` names the rule and carries the thresholds it
    used. :func:`assess` adds the size-aware permutation check to it.
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
class PermutationCheck:
    """Where a mean score lies in its permutation distribution over hidden dimensions.

    ``n``: samples (hidden dimensions) of each aligned matrix; ``sd``: standard
    deviation of the mean score when one side's samples are permuted (the
    mean is 0); ``sd_kind``: ``"bound"`` (the one-matrix sd, an upper bound for
    a mean over layers) or ``"exact"`` (from the models' within-model layer
    similarities); ``z = score / sd``; ``p_bound``: Cantelli's
    ``1 / (1 + z^2)`` (1 for ``z <= 0``), valid for any distribution.
    """

    n: int
    sd: float
    sd_kind: str
    z: float
    p_bound: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.z >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": self.n,
            "mean": 0.0,
            "sd": self.sd,
            "sd_kind": self.sd_kind,
            "z": self.z,
            "p_bound": self.p_bound,
            "threshold": self.threshold,
            "passed": self.passed,
        }


def permutation_sd(n: int, sim_a: np.ndarray | None = None, sim_b: np.ndarray | None = None) -> tuple[float, str]:
    """sd of a mean of ``m`` UCKA scores under one common permutation of ``n`` samples, and its kind.

    ``sim_a``/``sim_b``: ``(m, m)`` UCKA between model A's (B's) scored
    matrices, in the order the scores are averaged. Then
    ``Var = 2/(n(n-3)) * mean(sim_a * sim_b)``, exact. Without them, the one-matrix
    sd ``sqrt(2/(n(n-3)))``: an upper bound, since ``|sim| <= 1`` (``"bound"``).
    """
    if n < 4:
        raise StatsError(f"the permutation check needs at least 4 hidden dimensions (samples), got {n}")
    var = permutation_variance(n)
    if sim_a is None or sim_b is None:
        return math.sqrt(var), "bound"
    a, b = np.asarray(sim_a, dtype=np.float64), np.asarray(sim_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1] or a.size == 0:
        raise StatsError(f"within-model similarity matrices must be square and of one shape, got {a.shape} and {b.shape}")
    # mean(a * b) is a variance ratio: >= 0 (Schur product of PSD matrices) up to rounding, <= 1.
    ratio = min(1.0, max(float(np.mean(a * b)), 1.0 / a.size))
    return math.sqrt(var * ratio), "exact"


def permutation_check(
    score: float, n: int, sd: float | None = None, sd_kind: str = "bound", threshold: float = Z_PERMUTATION
) -> PermutationCheck:
    """The permutation z of ``score`` for ``n`` samples (``sd`` defaults to the one-matrix bound)."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise UsageError(f"the permutation threshold must be a positive number, got {threshold}")
    if sd is None:
        sd, sd_kind = permutation_sd(n)
    if not (sd > 0 and math.isfinite(sd)):
        raise StatsError(f"permutation sd must be a positive number, got {sd}")
    z = score / sd
    return PermutationCheck(n=int(n), sd=sd, sd_kind=sd_kind, z=z, p_bound=1.0 / (1.0 + z * z) if z > 0 else 1.0, threshold=threshold)


@dataclass(frozen=True)
class Assessment:
    """What a score means: z, both p-values under the null, the permutation check, the verdict."""

    z: float
    p_value: float
    p_empirical: float | None
    p_empirical_resolution: float | None
    verdict: Verdict
    permutation: PermutationCheck | None = None
    null_label: str = ""  # the label the null alone gives

    @property
    def exact_sd_could_change(self) -> bool:
        """True when the null says related, the bound-based check refused, and the exact sd (smaller) could still pass it."""
        p = self.permutation
        return p is not None and p.sd_kind == "bound" and self.null_label == "related" and not p.passed


def assess(
    score: float,
    null: NullModel,
    z_related: float = Z_RELATED,
    z_inconclusive: float = Z_INCONCLUSIVE,
    *,
    n_samples: int | None = None,
    permutation: tuple[float, str] | None = None,
    z_permutation: float = Z_PERMUTATION,
    exact_sd: Callable[[], tuple[float, str] | None] | None = None,
) -> Assessment:
    """z, normal-tail p, empirical p (when ``null`` holds raw scores), permutation check and verdict of ``score``.

    ``n_samples``: hidden dimensions per aligned matrix; without it there is
    no size-aware check (``decided_by`` is then ``"null"`` and says so).
    ``permutation``: ``(sd, kind)`` from :func:`permutation_sd` (default: the bound).
    Related needs ``z >= z_related`` under ``null`` *and* permutation
    ``z >= z_permutation``; a pair the null calls related but the permutation
    check does not is ``inconclusive``, decided by ``"permutation"``.
    ``exact_sd``: computes the exact ``(sd, kind)`` (or ``None``); called only when the bound refused a pair
    the null calls related (:attr:`Assessment.exact_sd_could_change`), the one case where it can change the verdict.
    """
    z = z_score(score, null)
    by_null = verdict(z, z_related, z_inconclusive)
    check = None
    if n_samples is not None:
        sd, kind = permutation if permutation is not None else (None, "bound")
        check = permutation_check(score, n_samples, sd, kind, z_permutation)
    out = Assessment(
        z=z,
        p_value=normal_p_value(z),
        p_empirical=empirical_p_value(score, null.scores),
        p_empirical_resolution=empirical_resolution(len(null.scores)),
        verdict=_decide(by_null, check, null.name),
        permutation=check,
        null_label=by_null.label,
    )
    exact = exact_sd() if exact_sd is not None and out.exact_sd_could_change else None
    if exact is None:
        return out
    return assess(score, null, z_related, z_inconclusive, n_samples=n_samples, permutation=exact, z_permutation=z_permutation)


def _decide(by_null: Verdict, check: PermutationCheck | None, null_name: str) -> Verdict:
    """The final verdict: the null's label, held back to ``inconclusive`` when the permutation check refuses."""
    if check is None:
        return Verdict(
            by_null.label, by_null.rule + " (no size-aware check: hidden size unknown)", "z", by_null.thresholds, "null", null_name
        )
    rule = (
        f"{by_null.rule}; related also needs permutation z >= {check.threshold:g} "
        f"(score >= {check.threshold * check.sd:.3g} at {check.n} hidden dimensions), else inconclusive"
    )
    thresholds = {**by_null.thresholds, "permutation": float(check.threshold)}
    label, decided_by = by_null.label, "null"
    if label == "related" and not check.passed:
        label, decided_by = "inconclusive", "permutation"
    return Verdict(label, rule, "z", thresholds, decided_by, null_name, check.to_dict())


def rescore(
    result: dict[str, Any],
    null: NullModel,
    z_related: float | None = None,
    z_inconclusive: float | None = None,
) -> dict[str, Any]:
    """A copy of a stored result (``PairResult.to_dict()``) with z, p-values and verdict under another null.

    Only the stored ``score`` is used: no weights are read. Thresholds default
    to the ones the stored verdict used (else :data:`Z_RELATED` /
    :data:`Z_INCONCLUSIVE` / :data:`Z_PERMUTATION`). The permutation check
    reuses the stored one's sample count and sd, else the smaller of the two
    models' hidden sizes with the bound sd; results with neither get none.
    """
    try:
        score = float(result["score"])
    except (KeyError, TypeError, ValueError):
        raise StatsError("result has no numeric 'score'; cannot re-score it under another null") from None
    stored = ((result.get("verdict") or {}).get("thresholds")) or {}
    zr = float(stored.get("related", Z_RELATED)) if z_related is None else z_related
    zi = float(stored.get("inconclusive", Z_INCONCLUSIVE)) if z_inconclusive is None else z_inconclusive
    zp = _positive(stored.get("permutation")) or Z_PERMUTATION
    n, perm = _stored_permutation(result)
    a = assess(score, null, zr, zi, n_samples=n, permutation=perm, z_permutation=zp)
    out = copy.deepcopy(result)
    out["z"] = a.z
    out["p_value"] = a.p_value
    out["p_empirical"] = a.p_empirical
    out["verdict"] = a.verdict.to_dict()
    out["null"] = null.to_dict()
    return out


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float, else ``None`` (stored results may be damaged)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and v > 0 else None


def _stored_permutation(result: dict[str, Any]) -> tuple[int | None, tuple[float, str] | None]:
    """``(n_samples, (sd, kind) or None)`` for :func:`assess`, from a stored result; ``(None, None)`` when unknown."""
    stored = result.get("verdict")
    check = stored.get("permutation") if isinstance(stored, dict) else None
    if isinstance(check, dict):
        n, sd = _positive(check.get("n_samples")), _positive(check.get("sd"))
        kind = check.get("sd_kind")
        if n is not None and n >= 4 and n == int(n):
            return int(n), ((sd, kind) if sd is not None and kind in ("bound", "exact") else None)
    sizes = [_positive(side.get("hidden_size")) if isinstance(side, dict) else None for side in (result.get("a"), result.get("b"))]
    if all(v is not None and v >= 4 and v == int(v) for v in sizes):
        return int(min(v for v in sizes if v is not None)), None
    return None, None


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
