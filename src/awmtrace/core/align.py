"""Hidden-dimension alignment and layer matching (AWM, steps 1 and 3).

Hidden dimension ``j`` of a model is the ``j``-th column of its token
embedding ``E`` (``vocab x hidden``). A derived model whose hidden space was
permuted, sign-flipped or scaled keeps each column up to that transform, so
matching columns by ``1 - |cos|`` with a linear assignment (LAP) recovers the
permutation, and the sign of the matched cosine recovers the flips. Only rows
of tokens that both vocabularies hold are used.

A residual-stream rotation (QuaRot, SpinQuant: ``E := E Q`` and every
``W := W Q``) keeps the function but mixes all columns, so no signed
permutation recovers it. The orthogonal Procrustes alignment does: from the
same accumulated cross-product, ``R = U V'`` from the SVD of the centred
``E_base' E_other`` maximises ``<E_base R, E_other>`` over matrices with
orthonormal columns (Schoenemann 1966). :func:`choose_alignment` picks one of
the two from measured evidence (see its docstring and docs/statistics.md).

When hidden sizes differ, the larger model is the base: every dimension of
the smaller one is assigned a distinct base dimension (a rectangular LAP), or
``R`` is semi-orthogonal ``(n_base, n_other)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.linalg import eigh
from scipy.linalg.blas import dsyrk, sgemm, sger

from awmtrace.core.cka import unbiased_linear_cka
from awmtrace.core.colstats import ColumnStats, EmbeddingStats
from awmtrace.core.lap import linear_sum_assignment
from awmtrace.errors import NumericalError, VocabularyError

__all__ = [
    "CosineAccumulator",
    "EmbeddingStats",
    "Procrustes",
    "AlignmentChoice",
    "assign_dimensions",
    "lap_quality",
    "centred_cross",
    "procrustes",
    "orthogonal_quality",
    "choose_alignment",
    "settled_by_lap",
    "match_layers",
    "ALIGN_MODES",
    "LAP_SUFFICIENT",
    "ORTH_MIN_CKA",
    "ORTH_MIN_QUALITY",
    "ORTH_MIN_ROWS_PER_DIM",
]

ZERO_COLUMN = "a hidden dimension of the token embedding is all zero on the shared tokens; it cannot be aligned"  # no cosine
#: Dimension-alignment modes :func:`choose_alignment` takes.
ALIGN_MODES = ("auto", "lap", "orthogonal")
#: ``auto`` stops at the LAP when its quality reaches this: a signed permutation already explains the embeddings.
LAP_SUFFICIENT = 0.5
#: ``auto`` computes the Procrustes fit only when the embeddings' unbiased CKA (rotation-invariant, no fitting) reaches this.
ORTH_MIN_CKA = 0.5
#: ``auto`` takes the orthogonal alignment only when it reconstructs the embeddings at least this well.
ORTH_MIN_QUALITY = 0.9
#: ``auto`` considers an orthogonal fit only with at least this many shared tokens per hidden dimension.
ORTH_MIN_ROWS_PER_DIM = 2
#: Evenly spaced shared-token rows kept for the embedding CKA.
CKA_SAMPLE_ROWS = 2048
#: Singular values below this fraction of the largest count as zero (rank of the cross-covariance).
RANK_RTOL = 1e-6


class CosineAccumulator:
    """Cosines (and centred cross-covariance) between the columns of two embeddings, fed a block of shared-token rows at a time.

    Streaming keeps only two float32 row blocks and the ``(n_other, n_base)``
    cross-product in memory, never both full float32 embeddings. Each side's
    blocks are scaled by an exact power of two whenever they would leave
    ``2**+-SAFE_EXPONENT`` (earlier sums are rescaled to match), so embeddings
    with values near the float32 limit neither overflow nor lose their
    cosines, which are scale-invariant per column.

    ``add(rows_base, rows_other)``: ``(t, n_base)`` and ``(t, n_other)`` rows of
    the same ``t`` shared tokens, in the same order. ``n_rows_total`` (the
    number of rows that will be added) lets the accumulator keep an evenly
    spaced sample of ``sample_rows`` rows for :func:`choose_alignment`.
    """

    def __init__(self, n_base: int, n_other: int, n_rows_total: int | None = None, sample_rows: int = CKA_SAMPLE_ROWS) -> None:
        if n_other > n_base:
            raise ValueError(f"the base must be the wider model: n_base={n_base} < n_other={n_other}")
        self.n_base = n_base
        self.n_other = n_other
        self._cross = self._new_cross()
        self._base = ColumnStats(n_base)
        self._other = ColumnStats(n_other)
        self._positions = (
            np.unique(np.linspace(0, n_rows_total - 1, min(n_rows_total, sample_rows)).round().astype(np.int64))
            if n_rows_total
            else np.zeros(0, dtype=np.int64)
        )
        self.n_rows = 0

    def _new_cross(self) -> np.ndarray:
        # (n_other, n_base): rows = dimensions to assign, columns = base dimensions.
        # Fortran order, so that SGEMM accumulates into it in place.
        return np.zeros((self.n_other, self.n_base), dtype=np.float32, order="F")

    def _add_cross(self, rb: np.ndarray, ro: np.ndarray) -> None:
        # cross += ro' rb by SGEMM with beta=1, in place: no (n_other, n_base)
        # temporary per block. ro.T and rb.T are Fortran-ordered views, so
        # BLAS reads the blocks without copies.
        out = sgemm(1.0, ro.T, rb.T, trans_b=1, beta=1.0, c=self._cross, overwrite_c=1)
        if not np.shares_memory(out, self._cross):  # pragma: no cover - ruled out by the layouts above
            raise RuntimeError("sgemm did not accumulate into the cosine buffer")

    def _scaled(self, side: ColumnStats, rows: np.ndarray) -> np.ndarray:
        """``rows`` as float32 in this side's units, rescaling what was accumulated when the exponent rises."""
        exp = side.block_exponent(rows)
        if side.exponent is not None and exp != side.exponent:
            shift = side.exponent - exp  # < 0: earlier sums shrink (exact powers of two)
            side.sums *= 2.0**shift
            side.sq *= 4.0**shift
            self._cross *= np.float32(2.0**shift)  # the cross-product is linear in each side
        side.exponent = exp
        out = np.ascontiguousarray(rows, dtype=np.float32)
        if exp != 0:
            out = out * np.float32(2.0**-exp) if out is rows else np.multiply(out, np.float32(2.0**-exp), out=out)
        return out

    def add(self, rows_base: np.ndarray, rows_other: np.ndarray) -> None:
        if rows_base.shape[0] != rows_other.shape[0]:
            raise ValueError(f"row blocks differ in length: {rows_base.shape[0]} vs {rows_other.shape[0]}")
        if rows_base.shape[1] != self.n_base or rows_other.shape[1] != self.n_other:
            raise ValueError(
                f"expected blocks of width {self.n_base} and {self.n_other}, got {rows_base.shape[1]} and {rows_other.shape[1]}"
            )
        rb = self._scaled(self._base, rows_base)
        ro = self._scaled(self._other, rows_other)
        self._add_cross(rb, ro)
        self._base.add(rb)
        self._other.add(ro)
        start = self.n_rows
        self.n_rows += rb.shape[0]
        lo, hi = np.searchsorted(self._positions, [start, self.n_rows])
        if hi > lo:
            local = self._positions[lo:hi] - start
            for side, rows in ((self._base, rb), (self._other, ro)):
                side.samples.append((int(side.exponent or 0), rows[local].copy()))

    def _samples(self, side: ColumnStats) -> np.ndarray:
        if not side.samples:
            return np.zeros((0, side.n), dtype=np.float32)
        final = side.exponent or 0
        parts = [rows * np.float32(2.0 ** (exp - final)) if exp != final else rows for exp, rows in side.samples]
        return np.concatenate(parts, axis=0)

    def stats(self) -> EmbeddingStats:
        """Column statistics and the row sample (call before :meth:`cosines`, which consumes the buffer)."""
        return EmbeddingStats(
            n_rows=self.n_rows,
            sum_base=self._base.sums.copy(),
            sum_other=self._other.sums.copy(),
            sq_base=self._base.sq.copy(),
            sq_other=self._other.sq.copy(),
            sample_base=self._samples(self._base),
            sample_other=self._samples(self._other),
        )

    def cosines(self) -> np.ndarray:
        """``(n_other, n_base)`` float32 cosine matrix (consumes the accumulator's buffer)."""
        norm_o = np.sqrt(self._other.sq)
        norm_b = np.sqrt(self._base.sq)
        if (norm_o == 0).any() or (norm_b == 0).any():
            raise NumericalError(ZERO_COLUMN)
        cos = self._cross
        cos /= norm_o[:, None].astype(np.float32)
        cos /= norm_b[None, :].astype(np.float32)
        return cos


def assign_dimensions(cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve the LAP on ``1 - |cos|``.

    ``cosines``: ``(n_other, n_base)`` with ``n_other <= n_base``.
    Returns ``(index, signs, matched)``, each ``(n_other,)``: the base
    dimension assigned to each dimension of the other model, the sign of
    their cosine (+1/-1, +1 for an exact zero) and the cosine itself.
    """
    n_other, n_base = cosines.shape
    if n_other > n_base:
        raise ValueError(f"cosines must be (n_other, n_base) with n_other <= n_base, got {cosines.shape}")
    # Maximising sum |cos| is the same assignment as minimising sum (1 - |cos|).
    rows, cols = linear_sum_assignment(np.abs(cosines), maximize=True)
    index = np.empty(n_other, dtype=np.int64)
    index[rows] = cols
    matched = cosines[np.arange(n_other), index].astype(np.float64)
    signs = np.where(matched < 0, -1.0, 1.0).astype(np.float32)
    return index, signs, matched


def lap_quality(matched: np.ndarray, index: np.ndarray, stats: EmbeddingStats) -> float:
    """How well the signed permutation reconstructs the other embedding from the base, in [0, 1].

    The cosine between the centred matrices ``E_other`` and ``E_base[:, index] diag(signs)``:
    ``sum_i |Cc[i, index[i]]| / (||Ec_base[:, index]||_F ||Ec_other||_F)``, with ``Cc``
    the centred cross-covariance. ``matched``: ``(n_other,)`` uncentred cosines the
    LAP matched (the cross-products are recovered from them and the column norms).
    Scale-invariant; 1 for an exact signed-permutation copy (pruned or not).
    """
    sq_b, sq_o = stats.sq_base[index], stats.sq_other
    cross = matched * np.sqrt(sq_o) * np.sqrt(sq_b)
    centred = cross - stats.sum_other * stats.sum_base[index] / max(stats.n_rows, 1)
    denom = math.sqrt(float(stats.centred_sq("base")[index].sum()) * float(stats.centred_sq("other").sum()))
    return float(min(np.abs(centred).sum() / denom, 1.0)) if denom > 0 else 0.0


def centred_cross(cosines: np.ndarray, stats: EmbeddingStats) -> np.ndarray:
    """Turn the cosine matrix back into the centred cross-covariance ``Cc = Ec_other' Ec_base``, in place.

    ``cosines``: ``(n_other, n_base)`` float32 (consumed). Centring removes the
    mean token vector each embedding has, which two unrelated models would
    otherwise share for free in a fitted rotation.
    """
    cosines *= np.sqrt(stats.sq_other).astype(np.float32)[:, None]
    cosines *= np.sqrt(stats.sq_base).astype(np.float32)[None, :]
    alpha = -1.0 / max(stats.n_rows, 1)
    so, sb = stats.sum_other.astype(np.float32), stats.sum_base.astype(np.float32)
    if cosines.flags.f_contiguous:
        out = sger(alpha, so, sb, a=cosines, overwrite_a=1)
        if np.shares_memory(out, cosines):
            return cosines
        return np.asarray(out, dtype=np.float32)  # pragma: no cover - f2py copies only on a layout mismatch
    cosines += np.float32(alpha) * np.outer(so, sb).astype(np.float32)
    return cosines


@dataclass(frozen=True, eq=False)
class Procrustes:
    """An orthogonal Procrustes fit: ``rotation`` ``(n_base, n_other)`` float32 with orthonormal columns.

    ``singular``: ``(n_other,)`` float64 singular values of ``Cc`` (descending); ``rank``
    how many exceed :data:`RANK_RTOL` times the largest.
    """

    rotation: np.ndarray
    singular: np.ndarray
    rank: int

    @property
    def nuclear_norm(self) -> float:
        return float(self.singular.sum())


def procrustes(cc: np.ndarray) -> Procrustes:
    """``R = argmax tr(R' Cc')`` over ``R`` with orthonormal columns, from ``cc`` = ``Cc``: ``(n_other, n_base)``.

    With ``Cc = A S B'`` (thin SVD), ``R = B A'``. It is computed as a polar
    factor through the symmetric ``Cc Cc' = A S^2 A'`` in float64 (an eigh is
    several times cheaper than an SVD on a CPU): ``R' = A S^-1 A' Cc``.
    Directions with zero singular value have no defined rotation: callers
    check ``rank`` first.
    """
    # The squared matrix needs float64 (its small eigenvalues are the squares of small singular values);
    # DSYRK does half the flops of a GEMM. The two products that apply the eigenvectors stay float32.
    gram = dsyrk(1.0, np.asarray(cc, dtype=np.float64))  # (n_other, n_other), upper triangle
    lam, vecs = eigh(gram, lower=False, overwrite_a=True, check_finite=False, driver="evr")  # MRRR: the fastest with vectors
    lam, vecs = lam[::-1], np.asarray(vecs[:, ::-1], dtype=np.float32)
    singular = np.sqrt(np.clip(lam, 0.0, None))
    top = float(singular[0]) if singular.size else 0.0
    kept = singular > RANK_RTOL * top if top > 0 else np.zeros(singular.shape, dtype=bool)
    inv = np.zeros(singular.shape, dtype=np.float32)
    inv[kept] = 1.0 / singular[kept]
    rank = int(np.count_nonzero(kept))
    rot_t = (vecs * inv[None, :]) @ (vecs.T @ np.asarray(cc, dtype=np.float32))  # (n_other, n_base) = A S^-1 A' Cc
    return Procrustes(rotation=np.ascontiguousarray(rot_t.T), singular=singular, rank=rank)


def orthogonal_quality(fit: Procrustes, stats: EmbeddingStats) -> float:
    """How well the rotation reconstructs the other embedding from the base, in [0, 1].

    The cosine between the centred ``E_other`` and ``E_base R``:
    ``||Cc||_* / (||Ec_base R||_F ||Ec_other||_F)``. For equal widths ``R`` is
    orthogonal and ``||Ec_base R||_F = ||Ec_base||_F``; when ``R`` is
    semi-orthogonal that norm is estimated from the row sample (the ratio
    ``||Ec_base R|| / ||Ec_base||`` on the sample). Scale-invariant; 1 for an
    exact rotated copy, pruned or not.
    """
    norm_o = math.sqrt(float(stats.centred_sq("other").sum()))
    norm_b = math.sqrt(float(stats.centred_sq("base").sum()))
    n_base, n_other = fit.rotation.shape
    if n_other < n_base:
        sample = stats.sample_base.astype(np.float64)
        sample = sample - sample.mean(axis=0)
        full = float(np.linalg.norm(sample))
        kept = float(np.linalg.norm(sample @ fit.rotation.astype(np.float64)))
        norm_b = norm_b * (kept / full) if full > 0 else 0.0
    denom = norm_o * norm_b
    return float(min(fit.nuclear_norm / denom, 1.0)) if denom > 0 else 0.0


def embedding_cka(stats: EmbeddingStats) -> float | None:
    """Unbiased linear CKA between the sampled embedding rows (samples = tokens), or ``None`` with too few rows.

    Invariant to any rotation and scale of either embedding and fitted to
    nothing, so unrelated embeddings score about 0 whatever their widths.
    """
    if stats.sample_base.shape[0] < 8:
        return None
    return unbiased_linear_cka(stats.sample_base, stats.sample_other)


@dataclass(frozen=True, eq=False)
class AlignmentChoice:
    """The dimension alignment :func:`choose_alignment` settled on, and the evidence.

    ``index``/``signs``/``matched``: ``(n_other,)`` the LAP solution (always
    computed: it is the cheap evidence). ``rotation``: ``(n_base, n_other)``
    float32 when ``method == "orthogonal"``, else ``None``. ``quality``:
    ``lap``, ``embedding_cka``, ``orthogonal`` (``None`` when not computed)
    and ``rank``; ``reason`` says which rule decided.
    """

    method: str
    index: np.ndarray
    signs: np.ndarray
    matched: np.ndarray
    rotation: np.ndarray | None
    quality: dict[str, Any]
    reason: str
    notes: tuple[str, ...] = ()
    decision_s: float = 0.0  # seconds spent after the LAP on evidence and the fit (what deciding cost)


def _too_few_rows(n_rows: int, n_other: int) -> str:
    return (
        f"an orthogonal alignment of {n_other} hidden dimensions needs at least {n_other + 1} shared tokens "
        f"(linearly independent centred embedding rows); found {n_rows}"
    )


def choose_alignment(acc: CosineAccumulator, mode: str = "auto") -> AlignmentChoice:
    """LAP, orthogonal Procrustes, or (``mode="auto"``) whichever the evidence supports.

    ``auto``, cheapest evidence first:

    1. LAP quality ``q_lap >= LAP_SUFFICIENT``: a signed permutation already
       explains the embeddings; LAP, nothing more is computed.
    2. Fewer than ``ORTH_MIN_ROWS_PER_DIM`` shared tokens per dimension, or an
       embedding CKA (rotation-invariant, fitted to nothing, ~0 for unrelated
       embeddings) below ``ORTH_MIN_CKA``: no evidence of a rotation; LAP.
    3. Otherwise fit the rotation; orthogonal only when it reconstructs the
       embeddings well in absolute terms (``q_orth >= ORTH_MIN_QUALITY``) and
       much better than the permutation (``q_orth - q_lap >= ORTH_MIN_QUALITY -
       LAP_SUFFICIENT``), with a full-rank fit; else LAP.

    ``orthogonal`` forces the fit and raises when the shared rows cannot
    determine it (too few tokens, rank-deficient). The accumulator's buffer is
    consumed.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"mode must be one of {', '.join(ALIGN_MODES)}, got {mode!r}")
    stats = acc.stats()
    cos = acc.cosines()
    index, signs, matched = assign_dimensions(cos)
    lap = AlignmentChoice("lap", index, signs, matched, None, {"lap": lap_quality(matched, index, stats)}, "")
    started = time.perf_counter()
    choice = _decide(lap, cos, stats, mode)
    return replace(choice, decision_s=time.perf_counter() - started)


def settled_by_lap(lap: AlignmentChoice, mode: str) -> AlignmentChoice | None:
    """The choice when the LAP alone decides (``lap`` mode, or ``auto`` with a sufficient LAP quality), else ``None``.

    ``lap``: the LAP solution with ``quality["lap"]`` set. The first rules of :func:`choose_alignment`.
    """
    q_lap = float(lap.quality["lap"])
    quality: dict[str, Any] = {"lap": q_lap, "embedding_cka": None, "orthogonal": None, "rank": None}
    if mode == "auto" and q_lap >= LAP_SUFFICIENT:
        return replace(
            lap, quality=quality, reason=f"lap quality {q_lap:.3f} >= {LAP_SUFFICIENT}: a signed permutation explains the embeddings"
        )
    if mode == "lap":
        return replace(lap, quality=quality, reason="--align lap")  # the paper's path, at the paper's cost: no further evidence
    return None


def _decide(lap: AlignmentChoice, cos: np.ndarray, stats: EmbeddingStats, mode: str) -> AlignmentChoice:
    """The rules of :func:`choose_alignment` after the LAP (``cos``: the ``(n_other, n_base)`` cosines, consumed)."""
    settled = settled_by_lap(lap, mode)
    if settled is not None:
        return settled
    q_lap = float(lap.quality["lap"])
    quality: dict[str, Any] = {"lap": q_lap, "embedding_cka": None, "orthogonal": None, "rank": None}

    def keep_lap(reason: str, *notes: str) -> AlignmentChoice:
        return replace(lap, quality=quality, reason=reason, notes=tuple(notes))

    quality["embedding_cka"] = cka = embedding_cka(stats)
    n_rows, n_other = stats.n_rows, cos.shape[0]
    if n_rows <= n_other:
        if mode == "orthogonal":
            raise VocabularyError(_too_few_rows(n_rows, n_other) + "; use --align lap, or models that share more tokens")
        return keep_lap("too few shared tokens for an orthogonal fit", _too_few_rows(n_rows, n_other) + ": kept the LAP alignment")
    if mode == "auto":
        if n_rows < ORTH_MIN_ROWS_PER_DIM * n_other:
            return keep_lap(
                f"{n_rows} shared tokens < {ORTH_MIN_ROWS_PER_DIM} per hidden dimension: a fitted rotation would not be evidence"
            )
        if cka is None or cka < ORTH_MIN_CKA:
            return keep_lap(f"embedding CKA {cka if cka is None else round(cka, 3)} < {ORTH_MIN_CKA}: no sign of a rotated relative")
    fit = procrustes(centred_cross(cos, stats))
    quality["rank"] = fit.rank
    if fit.rank < n_other:
        msg = (
            f"the shared-token embedding rows span only {fit.rank} of the {n_other} dimensions an orthogonal alignment must "
            f"fit (rank-deficient; at least {n_other + 1} shared tokens with independent rows are needed, found {n_rows})"
        )
        if mode == "orthogonal":
            raise NumericalError(msg + "; use --align lap")
        return keep_lap("rank-deficient shared embedding", msg + ": kept the LAP alignment")
    quality["orthogonal"] = q_orth = orthogonal_quality(fit, stats)
    orthogonal = replace(lap, method="orthogonal", rotation=fit.rotation, quality=quality, reason="--align orthogonal")
    if mode == "orthogonal":
        return orthogonal
    margin = ORTH_MIN_QUALITY - LAP_SUFFICIENT
    if q_orth >= ORTH_MIN_QUALITY and q_orth - q_lap >= margin:
        return replace(
            orthogonal,
            reason=f"orthogonal quality {q_orth:.3f} >= {ORTH_MIN_QUALITY} and {q_orth - q_lap:.3f} above lap: a rotated copy",
        )
    return keep_lap(f"orthogonal quality {q_orth:.3f} (needs >= {ORTH_MIN_QUALITY} and {margin:.1f} above lap {q_lap:.3f}): no rotation")


def match_layers(scores: np.ndarray) -> list[tuple[int, int]]:
    """Pair layers of two models of different depth by a LAP maximising total score.

    ``scores``: ``(L_a, L_b)``. Returns ``min(L_a, L_b)`` pairs ``(i, j)``
    sorted by ``i``; every layer of the shallower model appears once.
    """
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty 2-D matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise NumericalError("layer score matrix holds NaN or Inf")
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols, strict=True))
