"""Unbiased linear CKA (UCKA) between weight matrices.

The estimator is the unbiased HSIC U-statistic of Song et al. (2012), "Feature
selection via dependence maximization", JMLR 13, eq. (5), with linear kernels:

    HSIC(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

where ``K~``/``L~`` are the Gram matrices with their diagonals set to zero and
``n`` the number of samples. CKA = HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L)); the
``n(n-3)`` factor cancels in CKA but is kept so HSIC values are the real ones.

AWM treats the hidden *input* dimensions as samples: for ``W`` of shape
``(d_out, d_in)`` the sample matrix is ``X = W.T`` with shape ``(d_in, d_out)``.
The statistic is then unchanged by any orthogonal transform, permutation or
scaling of the output side (columns of ``X``), which covers GGUF's rope row
reordering and per-head permutations.

Two exact ways to get the three terms:

* Gram space: build ``K = X X'`` (``n x n``), cost ``n^2 p`` (SYRK).
* Feature space: ``tr(K L) = ||X'Y||_F^2`` and ``K 1 = X (X'1)``, cost
  ``n p q`` for the cross term and ``n p^2`` for the self term.

``method="auto"`` picks the cheaper one by shape: feature space when
``p + q < n`` (e.g. grouped-query K projections), Gram space otherwise.
Sums are accumulated in float64; large matrices stay float32. UCKA is
scale-invariant, so a matrix whose Gram would overflow (or underflow) float32
is rescaled by a power of two and its terms recomputed; that only happens
when the first pass shows it is needed, so ordinary weights pay nothing.

Permutation moments (the size-aware check of :mod:`awmtrace.core.stats`):
the unbiased HSIC equals ``<K^, L^>_F / (n(n-3))`` with ``K^`` the
*U-centred* Gram (zero diagonal and zero row sums; Szekely & Rizzo 2014,
"Partial distance correlation with methods for dissimilarities", Ann. Statist.
42(6), Prop. 1 and Sec. 4.1). Permuting the samples of one side, ``L^ -> P L^ P'``,
gives a Mantel-type statistic whose moments over all ``n!`` permutations are,
because row sums vanish,

    E[UCKA] = 0,    Var[UCKA] = 2 / (n (n - 3))

for *every* pair of matrices (the ``1/v`` of Szekely & Rizzo 2013, "The
distance correlation t-test of independence in high dimension", J. Multivar.
Anal. 117, with ``v = n(n-3)/2``). Across several matrix pairs scored under
one common permutation, ``Cov[UCKA_l, UCKA_m] = 2/(n(n-3)) * UCKA(K_l, K_m) *
UCKA(L_l, L_m)``: the within-model similarities of the matrices. The
derivation is in ``docs/statistics.md``; ``tests/test_cka.py`` checks both
against all permutations of small matrices and against Monte Carlo.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import sgemm, sgemv, ssyrk

from awmtrace.errors import NumericalError

__all__ = [
    "GramWorkspace",
    "GramTerms",
    "FeatureTerms",
    "gram_terms",
    "terms_of_gram",
    "feature_terms",
    "xtx_sq_norm",
    "hsic_from_sums",
    "hsic_from_gram_terms",
    "hsic_from_feature_terms",
    "float32_rescale",
    "float32_out_of_range",
    "permutation_variance",
    "similarity_matrix",
    "similarity_from_terms",
    "cka_from_terms",
    "unbiased_linear_cka",
    "unbiased_hsic_gram",
    "linear_cka",
    "choose_method",
]


#: Columns of a Gram matrix reduced together: a slab of 256 columns of a
#: 4096-row float32 Gram is 4 MiB, which stays in cache for the three
#: reductions :func:`_gram_stats` makes over it.
GRAM_SLAB = 256


def _rowwise_dot64(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` for two same-shape 2-D float32 arrays, accumulated in float64.

    Each contiguous line (a row, or a column of Fortran-ordered arrays) is
    reduced in float32 (a few thousand terms, vectorised), the line sums in
    float64: exact enough for UCKA near zero and no float64 copy of the
    matrices.
    """
    if a.flags.f_contiguous and b.flags.f_contiguous and not (a.flags.c_contiguous and b.flags.c_contiguous):
        a, b = a.T, b.T
    return float(np.einsum("ij,ij->i", a, b).sum(dtype=np.float64))


def _gram_stats(k: np.ndarray) -> tuple[np.ndarray, float]:
    """Row sums and ``sum(k * k)`` of a strict upper triangle, in one pass over memory.

    ``k``: ``(n, n)`` float32 holding the strict upper triangle of a symmetric
    zero-diagonal matrix ``K~`` (zeros elsewhere). Returns ``(K~ 1, sum(k*k))``,
    ``(n,)`` float64 and a float. The matrix is walked in slabs of
    :data:`GRAM_SLAB` contiguous columns; each slab's partial sums are float32
    over at most ``n`` terms and are accumulated in float64.
    """
    if not k.flags.f_contiguous and k.flags.c_contiguous:
        # Row sums of K~ are symmetric in rows and columns of its triangle.
        k = k.T
    n = k.shape[0]
    rows = np.zeros(n, dtype=np.float64)
    cols = np.empty(n, dtype=np.float64)
    sq = 0.0
    for j in range(0, n, GRAM_SLAB):
        slab = k[:, j : j + GRAM_SLAB]
        rows += slab.sum(axis=1)
        cols[j : j + slab.shape[1]] = slab.sum(axis=0)
        sq += float(np.einsum("ij,ij->j", slab, slab).sum(dtype=np.float64))
    return rows + cols, sq


def hsic_from_sums(tr_kl: float, total_k: float, total_l: float, cross_rows: float, n: int) -> float:
    """Song et al. (2012) eq. (5) from its three terms, for ``n`` samples: the one copy of the formula.

    ``tr_kl``: ``tr(K~ L~)``; ``total_k``/``total_l``: ``1'K~1``, ``1'L~1``;
    ``cross_rows``: ``1'K~L~1 = (K~1)'(L~1)``. Every backend calls this.
    """
    return (tr_kl + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 * cross_rows / (n - 2)) / (n * (n - 3))


#: Largest squared row norm (largest Gram entry) kept as it is: its square,
#: summed over an ``n x n`` Gram in float32, stays far below float32's 3.4e38.
_MAX_SQ_NORM = 1e12
#: Smallest one: below it Gram entries lose precision to float32 underflow.
_MIN_SQ_NORM = 1e-20


def float32_out_of_range(max_sq_norm: float) -> bool:
    return not (_MIN_SQ_NORM <= max_sq_norm <= _MAX_SQ_NORM)


def float32_rescale(max_abs: float, p: int) -> float | None:
    """Power of two that brings samples with largest ``|value|`` ``max_abs`` and ``p`` features to row norms <= 1.

    Exact in binary floating point, so it changes no bits beyond the
    exponent. ``None`` when nothing can help (all zero, or NaN/Inf).
    """
    if not (math.isfinite(max_abs) and max_abs > 0.0):
        return None
    return 2.0 ** (-(math.frexp(max_abs)[1] + math.ceil(math.log2(math.sqrt(max(p, 1))))))


def _rescaled(x: np.ndarray) -> np.ndarray | None:
    """``x`` times :func:`float32_rescale` (a new array), or ``None`` when it cannot help."""
    scale = float32_rescale(float(np.max(np.abs(x))) if x.size else 0.0, x.shape[1])
    return None if scale is None else x * np.float32(scale)


def permutation_variance(n: int) -> float:
    """Variance of UCKA over all permutations of ``n`` samples of one side: ``2 / (n (n - 3))`` (mean 0).

    Exact for every pair of matrices (see the module docstring); ``n >= 4``.
    """
    if n < 4:
        raise ValueError(f"the permutation variance of UCKA needs at least 4 samples, got {n}")
    return 2.0 / (n * (n - 3))


def _check_samples(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {x.shape}")
    if x.shape[0] < 4:
        raise NumericalError(f"unbiased HSIC needs at least 4 samples (hidden dimensions); {name} has {x.shape[0]}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _blas_view(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(x, False)`` when ``x`` is Fortran-ordered, ``(x.T, True)`` when C-ordered (both without a copy), else a Fortran copy.

    BLAS reads Fortran order; a C-ordered matrix is the Fortran-ordered transpose, which BLAS can be told to transpose back.
    """
    if x.flags.f_contiguous:
        return x, False
    if x.flags.c_contiguous:
        return x.T, True
    return np.asfortranarray(x), False


def _syrk_upper(x: np.ndarray, trans: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Upper triangle of ``x x'`` (``trans=0``) or ``x' x`` (``trans=1``); the rest is zero.

    BLAS SYRK does half the flops of a GEMM. It wants Fortran order: the
    sample matrices here are ``W.T`` views of C-ordered weights, which already
    are, so no copy is made. ``out`` (Fortran-ordered float32, strict lower
    triangle zero) receives the result in place: SYRK with ``beta=0`` writes
    only the upper triangle, so the lower one stays zero from call to call.
    """
    x, flipped = _blas_view(x)
    trans = 1 - trans if flipped else trans
    if out is None:
        return ssyrk(1.0, x, trans=trans)
    m = x.shape[1] if trans else x.shape[0]
    if out.shape != (m, m) or out.dtype != np.float32 or not out.flags.f_contiguous:
        raise ValueError(f"out must be a ({m}, {m}) Fortran-ordered float32 array, got {out.shape} {out.dtype}")
    k = ssyrk(1.0, x, trans=trans, beta=0.0, c=out, overwrite_c=1)
    if not np.shares_memory(k, out):  # pragma: no cover - f2py copies only on a layout mismatch, ruled out above
        raise RuntimeError("ssyrk did not write into the buffer it was given")
    return k


class GramWorkspace:
    """Reusable ``(n, n)`` float32 Gram buffers, so that scoring layer after layer allocates nothing.

    A fresh 64 MiB array per Gram costs page faults on every layer (and its
    pages return to the OS when freed); two buffers per size are enough for
    one pair. ``buffer(n, slot)`` returns the same zero-lower-triangle
    Fortran-ordered array for the same ``(n, slot)`` every time, so terms built
    in a slot are only valid until that slot is used again.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], np.ndarray] = {}

    def buffer(self, n: int, slot: int) -> np.ndarray:
        key = (n, slot)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = np.zeros((n, n), dtype=np.float32, order="F")
        return buf

    def clear(self) -> None:
        self._buffers.clear()


@dataclass(frozen=True, eq=False)
class GramTerms:
    """Per-matrix quantities for Gram-space HSIC.

    ``gram``: ``(n, n)`` float32, the strict upper triangle of ``X X'`` (zero
    diagonal and lower part; symmetry makes the rest redundant);
    ``row_sums``: ``(n,)`` float64 ``K~ 1``; ``total``: ``1'K~1``;
    ``self_hsic``: HSIC(K, K).
    """

    gram: np.ndarray
    row_sums: np.ndarray
    total: float
    self_hsic: float

    @property
    def n(self) -> int:
        return int(self.gram.shape[0])


def gram_terms(x: np.ndarray, out: np.ndarray | None = None) -> GramTerms:
    """Gram-space terms of ``x``: ``(n, p)`` samples x features (float32).

    ``out``: optional ``(n, n)`` buffer for the Gram (a :class:`GramWorkspace`
    buffer, or the ``gram`` of terms no longer needed); the result then
    shares it.
    """
    x = _check_samples(x, "X")
    n = x.shape[0]
    k = _syrk_upper(x, out=out)
    if float32_out_of_range(float(np.einsum("ii->i", k).max())):
        # The score is scale-invariant: redo the Gram at a power-of-two scale rather than keep float32 overflow.
        scaled = _rescaled(x)
        if scaled is not None:
            k = _syrk_upper(scaled, out=k)
    np.fill_diagonal(k, 0.0)
    row_sums, sq = _gram_stats(k)
    total = float(row_sums.sum())
    self_hsic = hsic_from_sums(2.0 * sq, total, total, float(row_sums @ row_sums), n)
    return GramTerms(gram=k, row_sums=row_sums, total=total, self_hsic=self_hsic)


def terms_of_gram(k: np.ndarray) -> GramTerms:
    """:class:`GramTerms` of a Gram given in full: ``(n, n)`` float32, symmetric, zero diagonal (e.g. a cached one, widened)."""
    upper = np.asfortranarray(np.triu(k, 1))
    row_sums, sq = _gram_stats(upper)
    total = float(row_sums.sum())
    return GramTerms(gram=upper, row_sums=row_sums, total=total,
                     self_hsic=hsic_from_sums(2.0 * sq, total, total, float(row_sums @ row_sums), k.shape[0]))  # fmt: skip


def hsic_from_gram_terms(tk: GramTerms, tl: GramTerms) -> float:
    """Unbiased HSIC between two matrices from their :class:`GramTerms` (same n)."""
    if tk.n != tl.n:
        raise ValueError(f"sample counts differ: {tk.n} vs {tl.n}")
    # Off-diagonal sum over both triangles = twice the strict upper one.
    tr_kl = 2.0 * _rowwise_dot64(tk.gram, tl.gram)
    return hsic_from_sums(tr_kl, tk.total, tl.total, float(tk.row_sums @ tl.row_sums), tk.n)


@dataclass(frozen=True, eq=False)
class FeatureTerms:
    """Per-matrix quantities for feature-space HSIC.

    ``x``: ``(n, p)`` float32 samples; ``sq_norms``: ``(n,)`` float64 diagonal
    of ``X X'``; ``row_sums``: ``(n,)`` float64 ``K~ 1``; ``total``: ``1'K~1``;
    ``self_hsic``: HSIC(K, K).
    """

    x: np.ndarray
    sq_norms: np.ndarray
    row_sums: np.ndarray
    total: float
    self_hsic: float

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def feature_terms(x: np.ndarray, xtx_sq: float | None = None) -> FeatureTerms:
    """Feature-space terms of ``x``: ``(n, p)`` samples x features (float32).

    ``xtx_sq``: ``||X'X||_F^2`` when already known (a cache keeps it: row permutations and signs do not
    change it), which saves the ``(p, p)`` product; ignored when ``x`` has to be rescaled.
    """
    x = _check_samples(x, "X")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below and undone by rescaling
        terms = _feature_terms(x, xtx_sq)
    if float32_out_of_range(float(terms.sq_norms.max())):
        scaled = _rescaled(x)
        if scaled is not None:
            terms = _feature_terms(scaled)
    return terms


def _feature_terms(x: np.ndarray, xtx_sq: float | None = None) -> FeatureTerms:
    n = x.shape[0]
    sq_norms = np.einsum("ij,ij->i", x, x).astype(np.float64)
    col_sums = x.sum(axis=0, dtype=np.float64)
    # scipy's BLAS, not numpy's matmul, for every product here: numpy and
    # scipy each bundle an OpenBLAS with its own thread pool, and alternating
    # between them leaves one pool spinning while the other works.
    xf, flipped = _blas_view(x)
    row_sums = sgemv(1.0, xf, col_sums.astype(np.float32), trans=int(flipped)).astype(np.float64) - sq_norms
    total = float(col_sums @ col_sums - sq_norms.sum())
    if xtx_sq is None:
        xtx_sq = xtx_sq_norm(x)
    tr_kk = xtx_sq - float(sq_norms @ sq_norms)
    self_hsic = hsic_from_sums(tr_kk, total, total, float(row_sums @ row_sums), n)
    return FeatureTerms(x=x, sq_norms=sq_norms, row_sums=row_sums, total=total, self_hsic=self_hsic)


def xtx_sq_norm(x: np.ndarray) -> float:
    """``||X'X||_F^2`` of samples ``x`` ``(n, p)`` float32: one SYRK of the ``(p, p)`` upper triangle, float64 sums."""
    xtx = _syrk_upper(x, trans=1)
    diag = np.einsum("ii->i", xtx).astype(np.float64)
    return 2.0 * _rowwise_dot64(xtx, xtx) - float(diag @ diag)


def hsic_from_feature_terms(tk: FeatureTerms, tl: FeatureTerms) -> float:
    """Unbiased HSIC between two matrices from their :class:`FeatureTerms` (same n)."""
    if tk.n != tl.n:
        raise ValueError(f"sample counts differ: {tk.n} vs {tl.n}")
    (xa, ta), (xb, tb) = _blas_view(tk.x), _blas_view(tl.x)
    cross = sgemm(1.0, xa, xb, trans_a=int(not ta), trans_b=int(tb))  # (p, q) = X_a' X_b: W_a W_b'
    tr_kl = _rowwise_dot64(cross, cross) - float(tk.sq_norms @ tl.sq_norms)
    return hsic_from_sums(tr_kl, tk.total, tl.total, float(tk.row_sums @ tl.row_sums), tk.n)


def cka_from_terms(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    """CKA from the three HSIC values; raises when a matrix has no variance."""
    if not all(math.isfinite(v) for v in (hsic_xy, hsic_xx, hsic_yy)):
        raise NumericalError(
            "UCKA is not finite: the weights hold NaN or Inf values, or values so large that float32 sums overflow "
            "even after rescaling; check the checkpoint"
        )
    if not (hsic_xx > 0.0 and hsic_yy > 0.0):
        raise NumericalError(
            "a weight matrix has no variance across hidden dimensions (unbiased HSIC <= 0); the checkpoint is likely zeroed or constant"
        )
    value = hsic_xy / np.sqrt(hsic_xx * hsic_yy)
    if not np.isfinite(value):
        raise NumericalError("UCKA is not finite: the weights hold NaN or Inf values")
    return float(value)


def similarity_matrix(xs: Iterable[np.ndarray]) -> np.ndarray:
    """UCKA between every two of ``m`` sample matrices of one model, each ``(n, p_i)``: ``(m, m)``, ones on the diagonal.

    These within-model similarities give the covariance of layer scores
    under one common permutation (module docstring). Each matrix is turned
    into its Gram as it arrives (an iterator may reuse its buffers); holds
    ``m`` Grams of ``n x n`` float32 at once: meant for small ``n``.
    """
    return similarity_from_terms([gram_terms(x) for x in xs])


def similarity_from_terms(terms: Sequence[GramTerms]) -> np.ndarray:
    """:func:`similarity_matrix` from the matrices' :class:`GramTerms` (e.g. built from stored Grams)."""
    m = len(terms)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = cka_from_terms(hsic_from_gram_terms(terms[i], terms[j]), terms[i].self_hsic, terms[j].self_hsic)
    return out


def choose_method(n: int, p: int, q: int) -> str:
    """``"feature"`` when ``n (p+q)^2 < n^2 (p+q)``, i.e. ``p + q < n``; else ``"gram"``."""
    return "feature" if p + q < n else "gram"


def unbiased_linear_cka(x: np.ndarray, y: np.ndarray, method: str = "auto", workspace: GramWorkspace | None = None) -> float:
    """Unbiased linear CKA between sample matrices ``x``: ``(n, p)`` and ``y``: ``(n, q)``.

    ``method`` is ``"auto"``, ``"gram"`` or ``"feature"``; all give the same
    value up to float32 rounding. ``workspace`` lends the Gram buffers (its
    slots 0 and 1), so repeated calls allocate nothing.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples (rows): {x.shape} vs {y.shape}")
    if method == "auto":
        method = choose_method(x.shape[0], x.shape[1], y.shape[1])
    if method == "gram":
        n = x.shape[0]
        if workspace is not None:
            tx, ty = gram_terms(x, out=workspace.buffer(n, 0)), gram_terms(y, out=workspace.buffer(n, 1))
        else:
            tx, ty = gram_terms(x), gram_terms(y)
        return cka_from_terms(hsic_from_gram_terms(tx, ty), tx.self_hsic, ty.self_hsic)
    if method == "feature":
        fx, fy = feature_terms(x), feature_terms(y)
        return cka_from_terms(hsic_from_feature_terms(fx, fy), fx.self_hsic, fy.self_hsic)
    raise ValueError(f"method must be 'auto', 'gram' or 'feature', got {method!r}")


def unbiased_hsic_gram(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Reference unbiased HSIC from two full ``(n, n)`` Gram matrices, in float64.

    Straight from Song et al. (2012) eq. (5); slow and simple, used as an oracle.
    """
    k = np.array(k, dtype=np.float64)
    l = np.array(l, dtype=np.float64)  # noqa: E741
    n = k.shape[0]
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return float(
        (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))
    )


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The biased (plug-in) linear CKA of Kornblith et al. (2019), for reference only.

    ``x``: ``(n, p)``, ``y``: ``(n, q)``. Centres features, then
    ``||X'Y||_F^2 / (||X'X||_F ||Y'Y||_F)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))
