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
Sums are accumulated in float64; large matrices stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import ssyrk

from awmtrace.errors import NumericalError

__all__ = [
    "GramTerms",
    "FeatureTerms",
    "gram_terms",
    "feature_terms",
    "hsic_from_gram_terms",
    "hsic_from_feature_terms",
    "cka_from_terms",
    "unbiased_linear_cka",
    "unbiased_hsic_gram",
    "linear_cka",
    "choose_method",
]


def _rowwise_dot64(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` for two same-shape 2-D float32 arrays, accumulated in float64.

    Each row is reduced in float32 (a few thousand terms, vectorised), the row
    sums in float64: exact enough for UCKA near zero and no float64 copy of
    the matrices.
    """
    return float(np.einsum("ij,ij->i", a, b).sum(dtype=np.float64))


def _hsic(tr_kl: float, total_k: float, total_l: float, cross_rows: float, n: int) -> float:
    """Song et al. (2012) eq. (5) from its three terms (n samples)."""
    return (tr_kl + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 * cross_rows / (n - 2)) / (n * (n - 3))


def _check_samples(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {x.shape}")
    if x.shape[0] < 4:
        raise NumericalError(
            f"unbiased HSIC needs at least 4 samples (hidden dimensions); {name} has {x.shape[0]}"
        )
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _syrk_upper(x: np.ndarray, trans: int = 0) -> np.ndarray:
    """Upper triangle of ``x x'`` (``trans=0``) or ``x' x`` (``trans=1``); the rest is zero.

    BLAS SYRK does half the flops of a GEMM. It wants Fortran order: the
    sample matrices here are ``W.T`` views of C-ordered weights, which already
    are, so no copy is made.
    """
    return ssyrk(1.0, np.asfortranarray(x), trans=trans)


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


def gram_terms(x: np.ndarray) -> GramTerms:
    """Gram-space terms of ``x``: ``(n, p)`` samples x features (float32)."""
    x = _check_samples(x, "X")
    n = x.shape[0]
    k = _syrk_upper(x)
    np.fill_diagonal(k, 0.0)
    row_sums = k.sum(axis=1, dtype=np.float64) + k.sum(axis=0, dtype=np.float64)
    total = float(row_sums.sum())
    self_hsic = _hsic(2.0 * _rowwise_dot64(k, k), total, total, float(row_sums @ row_sums), n)
    return GramTerms(gram=k, row_sums=row_sums, total=total, self_hsic=self_hsic)


def hsic_from_gram_terms(tk: GramTerms, tl: GramTerms) -> float:
    """Unbiased HSIC between two matrices from their :class:`GramTerms` (same n)."""
    if tk.n != tl.n:
        raise ValueError(f"sample counts differ: {tk.n} vs {tl.n}")
    # Off-diagonal sum over both triangles = twice the strict upper one.
    tr_kl = 2.0 * _rowwise_dot64(tk.gram, tl.gram)
    return _hsic(tr_kl, tk.total, tl.total, float(tk.row_sums @ tl.row_sums), tk.n)


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


def feature_terms(x: np.ndarray) -> FeatureTerms:
    """Feature-space terms of ``x``: ``(n, p)`` samples x features (float32)."""
    x = _check_samples(x, "X")
    n = x.shape[0]
    sq_norms = np.einsum("ij,ij->i", x, x).astype(np.float64)
    col_sums = x.sum(axis=0, dtype=np.float64)
    row_sums = (x @ col_sums.astype(np.float32)).astype(np.float64) - sq_norms
    total = float(col_sums @ col_sums - sq_norms.sum())
    xtx = _syrk_upper(x, trans=1)  # (p, p) upper triangle of X'X
    diag = np.einsum("ii->i", xtx).astype(np.float64)
    tr_kk = 2.0 * _rowwise_dot64(xtx, xtx) - float(diag @ diag) - float(sq_norms @ sq_norms)
    self_hsic = _hsic(tr_kk, total, total, float(row_sums @ row_sums), n)
    return FeatureTerms(x=x, sq_norms=sq_norms, row_sums=row_sums, total=total, self_hsic=self_hsic)


def hsic_from_feature_terms(tk: FeatureTerms, tl: FeatureTerms) -> float:
    """Unbiased HSIC between two matrices from their :class:`FeatureTerms` (same n)."""
    if tk.n != tl.n:
        raise ValueError(f"sample counts differ: {tk.n} vs {tl.n}")
    cross = tk.x.T @ tl.x  # (p, q): W_a W_b'
    tr_kl = _rowwise_dot64(cross, cross) - float(tk.sq_norms @ tl.sq_norms)
    return _hsic(tr_kl, tk.total, tl.total, float(tk.row_sums @ tl.row_sums), tk.n)


def cka_from_terms(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    """CKA from the three HSIC values; raises when a matrix has no variance."""
    if not (hsic_xx > 0.0 and hsic_yy > 0.0):
        raise NumericalError(
            "a weight matrix has no variance across hidden dimensions (unbiased HSIC <= 0); "
            "the checkpoint is likely zeroed or constant"
        )
    value = hsic_xy / np.sqrt(hsic_xx * hsic_yy)
    if not np.isfinite(value):
        raise NumericalError("UCKA is not finite: the weights hold NaN or Inf values")
    return float(value)


def choose_method(n: int, p: int, q: int) -> str:
    """``"feature"`` when ``n (p+q)^2 < n^2 (p+q)``, i.e. ``p + q < n``; else ``"gram"``."""
    return "feature" if p + q < n else "gram"


def unbiased_linear_cka(x: np.ndarray, y: np.ndarray, method: str = "auto") -> float:
    """Unbiased linear CKA between sample matrices ``x``: ``(n, p)`` and ``y``: ``(n, q)``.

    ``method`` is ``"auto"``, ``"gram"`` or ``"feature"``; all give the same
    value up to float32 rounding.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples (rows): {x.shape} vs {y.shape}")
    if method == "auto":
        method = choose_method(x.shape[0], x.shape[1], y.shape[1])
    if method == "gram":
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
        (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ l @ one))
        / (n * (n - 3))
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
