"""A LAP alignment proven optimal without the full cosine matrix.

The full alignment (:func:`awmtrace.core.align.choose_alignment`) needs every
cosine between the ``n_other`` columns of one embedding and the ``n_base``
of the other over all shared tokens: ``2 V n_other n_base`` flops, the
largest single cost of a pair scored from cached Grams. For a related pair
the assignment is usually evident, and it can be *proven* optimal for far
less:

1. A candidate ``m`` (other dimension ``j`` -> base dimension ``m(j)``) is the
   row-wise largest ``|cos|`` over a sample of shared rows
   (:func:`candidate`); it must be one-to-one.
2. One pass over all shared rows gives the exact matched cosines
   ``c_j = cos(b_j, a_m(j))`` (:class:`MatchedAccumulator`, ``2 V n`` flops)
   and the column statistics the LAP quality needs.
3. Write ``b^_j = c_j a^_k + s_j r_j`` with ``k = m(j)``, ``s_j = sqrt(1 - c_j^2)``
   and ``r_j`` a unit vector orthogonal to ``a^_k``. For any other base
   column ``i``, ``|cos(b_j, a_i)| <= |c_j| g + s_j sqrt(1 - g^2)`` with
   ``g = |cos(a_i, a_k)|``, and the right side grows with ``g`` while
   ``g < |c_j|``. The base's own column cosines ``g`` (:class:`ColumnCosines`,
   a property of the base model alone, computed once per model) thus rule out
   every other column ``i`` whose bound falls below ``|c_j|``; the few that
   remain, columns nearly parallel to ``a_k`` (:func:`suspects`), get their
   exact cosine with ``b_j`` from a second pass over just those pairs
   (:class:`PairAccumulator`). When every other column is ruled out for every
   ``j`` and ``m`` is one-to-one, ``m`` reaches every row's minimum of
   ``1 - |cos|``: it is the unique LAP optimum, the very assignment the full
   matrix gives (:func:`certified`).

The proof is required to hold with :data:`MARGIN` to spare, far above the
float32 rounding of either computation, so the full matrix's rounding cannot
pick another assignment. Unrelated pairs fail step 1 or 3 and take the full
path; nothing is ever approximated.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg.blas import sgemm, ssyrk

from awmtrace.core.align import ZERO_COLUMN, CosineAccumulator
from awmtrace.errors import NumericalError

__all__ = [
    "ColumnCosines",
    "MatchedAccumulator",
    "PairAccumulator",
    "abs_cosines",
    "candidate",
    "certified",
    "may_certify",
    "suspects",
    "MARGIN",
    "SAMPLE_ROWS",
]

#: How far (in cosine) every proven best match must beat the bound on all others.
MARGIN = 0.01
#: Evenly spaced shared rows used to propose the candidate assignment.
SAMPLE_ROWS = 1024
#: A candidate whose smallest matched |cos| on the sample is below this is not tried (a proof needs about 0.71).
SAMPLE_MIN_COS = 0.5
#: Rows of the sample, and columns of the other model, tried first: unless their median best |cos| reaches
#: SAMPLE_MIN_COS, no candidate. Over 256 rows a column's |cos| with an unrelated one has sd 1/16, its best
#: over 4096 base columns about 0.27.
GATE_ROWS = 256


class ColumnCosines:
    """Largest ``|cos|`` of each embedding column with any other column, accumulated over row blocks.

    ``add(rows)``: ``(t, n)`` finite float32 rows. Each block is scaled by an
    exact power of two into a safe range, its Gram taken by SYRK in float32
    and added, scaled back, to a float64 sum, so extreme embeddings neither
    overflow nor lose precision across blocks.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._gram = np.zeros((n, n), dtype=np.float64, order="F")
        self.n_rows = 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n:
            raise ValueError(f"expected rows of width {self.n}, got {rows.shape}")
        peak = float(np.max(np.abs(rows), initial=0.0))
        if peak == 0.0:
            self.n_rows += rows.shape[0]
            return
        exp = math.frexp(peak)[1]
        scaled = rows * np.float32(2.0**-exp)
        # rows' rows = (n, n); the C-ordered (t, n) block read as its Fortran transpose (n, t): no copy.
        block = ssyrk(1.0, scaled.T, trans=0)
        self._gram += np.asarray(block, dtype=np.float64) * (4.0**exp)
        self.n_rows += rows.shape[0]

    def gram(self) -> np.ndarray:
        """``(n, n)`` float64 ``E'E`` over the rows added, both triangles."""
        upper = np.triu(self._gram)
        return upper + np.triu(upper, 1).T

    def max_other(self) -> np.ndarray:
        """``(n,)``: for each column, the largest ``|cos|`` with another column (1 where a column is zero)."""
        return abs_cosines(self.gram()).max(axis=0) if self.n > 1 else np.zeros(self.n)


def abs_cosines(gram: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 ``|cos|`` between columns from their Gram ``E'E``, zero diagonal; a zero column's row and column are 1.

    (A zero column bounds nothing; the alignment refuses such an embedding anyway.)
    """
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    zero = norms == 0.0
    norms[zero] = 1.0
    scaled = np.divide(gram, norms[:, None])
    scaled /= norms[None, :]
    cos = np.abs(scaled, out=scaled).astype(np.float32)
    np.minimum(cos, 1.0, out=cos)
    cos[zero, :] = 1.0
    cos[:, zero] = 1.0
    np.fill_diagonal(cos, 0.0)
    return cos


class PairAccumulator(CosineAccumulator):
    """A :class:`CosineAccumulator` that sums only chosen products ``sum_r b[r, other_cols[p]] a[r, base_cols[p]]``.

    Same streaming, scaling and column statistics (``stats()``), ``2 t P`` flops per block for ``P``
    pairs instead of ``2 t n_other n_base``; :meth:`cosines` gives their ``(P,)`` exact cosines.
    """

    def __init__(self, base_cols: np.ndarray, other_cols: np.ndarray, n_base: int, n_other: int, n_rows_total: int | None = None) -> None:
        self.base_cols = np.asarray(base_cols, dtype=np.int64)
        self.other_cols = np.asarray(other_cols, dtype=np.int64)
        ident = np.arange(self.other_cols.size)
        self._plain = (
            self.base_cols.size == n_base and bool(np.array_equal(self.base_cols, ident)),
            self.other_cols.size == n_other and bool(np.array_equal(self.other_cols, ident)),
        )
        super().__init__(n_base, n_other, n_rows_total)

    def _new_cross(self) -> np.ndarray:
        return np.zeros(self.base_cols.size, dtype=np.float64)

    def _add_cross(self, rb: np.ndarray, ro: np.ndarray) -> None:
        # float32 within a block (at most a few thousand terms), float64 across blocks.
        b = rb if self._plain[0] else np.take(rb, self.base_cols, axis=1)
        o = ro if self._plain[1] else np.take(ro, self.other_cols, axis=1)
        self._cross += np.einsum("ij,ij->j", b, o)

    def cosines(self) -> np.ndarray:
        """``(P,)`` float64 cosines of the chosen pairs."""
        norm_o = np.sqrt(self._other.sq[self.other_cols])
        norm_b = np.sqrt(self._base.sq[self.base_cols])
        if (norm_o == 0).any() or (norm_b == 0).any():
            raise NumericalError(ZERO_COLUMN)
        return np.asarray(self._cross / norm_o / norm_b, dtype=np.float64)


class MatchedAccumulator(PairAccumulator):
    """The pairs of a candidate assignment: other dimension ``j`` with base dimension ``index[j]``; :meth:`matched` their cosines."""

    def __init__(self, index: np.ndarray, n_base: int, n_rows_total: int | None = None) -> None:
        index = np.asarray(index, dtype=np.int64)
        super().__init__(index, np.arange(index.size), n_base, index.size, n_rows_total)

    def matched(self) -> np.ndarray:
        return self.cosines()


def _best_cosines(sample_base: np.ndarray, sample_other: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(index, |cos|)``: each other column's best base column over the sampled rows and that cosine; ``None`` with a zero column."""
    norm_b = np.sqrt(np.einsum("ij,ij->j", sample_base, sample_base, dtype=np.float64))
    norm_o = np.sqrt(np.einsum("ij,ij->j", sample_other, sample_other, dtype=np.float64))
    if (norm_b == 0).any() or (norm_o == 0).any():
        return None
    # (n_other, n_base) by scipy's SGEMM (not numpy's matmul: the two libraries' BLAS thread pools fight when alternated).
    # Dividing by the base's column norms is enough for a row-wise argmax: the other's norm is constant along a row.
    cos = np.abs(sgemm(1.0, np.ascontiguousarray(sample_other).T, np.ascontiguousarray(sample_base).T, trans_b=1))
    cos /= norm_b.astype(np.float32)[None, :]
    index = np.argmax(cos, axis=1).astype(np.int64)
    return index, cos[np.arange(index.size), index] / norm_o


def candidate(sample_base: np.ndarray, sample_other: np.ndarray) -> np.ndarray | None:
    """Row-wise best ``|cos|`` over sampled rows: ``(n_other,)`` base index, or ``None`` when not one-to-one.

    ``sample_base``: ``(t, n_base)``, ``sample_other``: ``(t, n_other)`` float32, the same tokens in the same order.
    A sample far from the cosines a proof needs (see :func:`may_certify`) is not worth the exact pass; an
    unrelated pair is usually told first from :data:`GATE_ROWS` rows and as many of the other's columns.
    Either way a ``None`` only sends the pair down the full path.
    """
    t, n_other = sample_other.shape
    if t >= 4 * GATE_ROWS and n_other >= 4 * GATE_ROWS:
        rows, cols = slice(None, None, t // GATE_ROWS), slice(None, None, n_other // GATE_ROWS)
        gate = _best_cosines(sample_base[rows], sample_other[rows, cols])
        if gate is None or float(np.median(gate[1])) < SAMPLE_MIN_COS:
            return None
    best = _best_cosines(sample_base, sample_other)
    if best is None:
        return None
    index, sampled = best
    if np.unique(index).size != index.size:
        return None
    return index if float(sampled.min()) >= SAMPLE_MIN_COS else None


#: At most this many suspect pairs per dimension are checked exactly; more means the candidate is no clear answer.
MAX_SUSPECTS_PER_DIM = 8


def may_certify(matched: np.ndarray, margin: float = MARGIN) -> bool:
    """Whether :func:`certified` can succeed for these matched cosines whatever the base's column cosines.

    The bound is at least ``sqrt(1 - c^2)`` (at ``g = 0``), so every ``|c|`` must exceed the
    solution of ``sqrt(1 - c^2) = c - margin``.
    """
    c_min = (margin + math.sqrt(2.0 - margin * margin)) / 2.0
    return bool(matched.size) and float(np.min(np.abs(matched))) > c_min


def suspects(matched: np.ndarray, index: np.ndarray, cosines: np.ndarray, margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Base columns ``i`` the bound cannot rule out as better matches of other column ``j``: ``(i, j)`` index arrays.

    ``matched``: ``(n_other,)`` exact cosines of the candidate ``index``; ``cosines``: ``(n_base, n_base)``
    :func:`abs_cosines` of the base over the same rows.
    """
    c = np.abs(matched).astype(np.float32)
    s = np.sqrt(np.maximum(1.0 - c * c, 0.0))
    # First with each base column's largest cosine (the bound grows with g): most dimensions are settled here.
    g_max = cosines.max(axis=0)[index]
    need = np.nonzero((g_max >= c) | (c * g_max + s * np.sqrt(np.maximum(1.0 - g_max * g_max, 0.0)) >= c - margin))[0]
    if need.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    c, s = c[need], s[need]
    g = np.take(cosines, index[need], axis=1)  # (n_base, len(need)): |cos(a_i, a_k(j))|
    bound = g * c[None, :]
    bound += s[None, :] * np.sqrt(np.maximum(1.0 - g * g, 0.0))
    open_ = (g >= c[None, :]) | (bound >= (c - margin)[None, :])
    open_[index[need], np.arange(need.size)] = False  # the match itself
    i, jj = np.nonzero(open_)
    return i.astype(np.int64), need[jj].astype(np.int64)


def certified(
    matched: np.ndarray, index: np.ndarray, cosines: np.ndarray, checked: np.ndarray | None = None, margin: float = MARGIN
) -> bool:
    """Whether ``index`` is proven the unique LAP optimum (module docstring, step 3).

    ``matched``: ``(n_other,)`` exact cosines of the candidate; ``cosines``: the base's
    :func:`abs_cosines` over the same rows; ``checked``: exact cosines of the :func:`suspects` pairs,
    in their order (needed when there are any).
    """
    if np.unique(index).size != index.size or not may_certify(matched, margin):
        return False
    i, j = suspects(matched, index, cosines, margin)
    if i.size == 0:
        return True
    if checked is None or checked.shape != i.shape:
        return False
    return bool(np.all(np.abs(checked) < np.abs(matched[j]) - margin))
