"""Hidden-dimension alignment and layer matching (AWM, steps 1 and 3).

Hidden dimension ``j`` of a model is the ``j``-th column of its token
embedding ``E`` (``vocab x hidden``). A derived model whose hidden space was
permuted, sign-flipped or scaled keeps each column up to that transform, so
matching columns by ``1 - |cos|`` with a linear assignment (LAP) recovers the
permutation, and the sign of the matched cosine recovers the flips. Only rows
of tokens that both vocabularies hold are used.

When hidden sizes differ, the larger model is the base: every dimension of
the smaller one is assigned a distinct base dimension (a rectangular LAP).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import sgemm
from scipy.optimize import linear_sum_assignment

from awmtrace.errors import NumericalError

__all__ = ["CosineAccumulator", "assign_dimensions", "match_layers"]


class CosineAccumulator:
    """Cosines between the columns of two embeddings, fed a block of shared-token rows at a time.

    Streaming keeps only two float32 row blocks and the ``(n_small, n_base)``
    cross-product in memory, never both full float32 embeddings.

    ``add(rows_base, rows_other)``: ``(t, n_base)`` and ``(t, n_other)`` rows of
    the same ``t`` shared tokens, in the same order.
    """

    def __init__(self, n_base: int, n_other: int) -> None:
        if n_other > n_base:
            raise ValueError(f"the base must be the wider model: n_base={n_base} < n_other={n_other}")
        self.n_base = n_base
        self.n_other = n_other
        # (n_other, n_base): rows = dimensions to assign, columns = base dimensions.
        # Fortran order, so that SGEMM accumulates into it in place.
        self._cross = np.zeros((n_other, n_base), dtype=np.float32, order="F")
        self._sq_base = np.zeros(n_base, dtype=np.float64)
        self._sq_other = np.zeros(n_other, dtype=np.float64)
        self.n_rows = 0

    def add(self, rows_base: np.ndarray, rows_other: np.ndarray) -> None:
        if rows_base.shape[0] != rows_other.shape[0]:
            raise ValueError(f"row blocks differ in length: {rows_base.shape[0]} vs {rows_other.shape[0]}")
        if rows_base.shape[1] != self.n_base or rows_other.shape[1] != self.n_other:
            raise ValueError(
                f"expected blocks of width {self.n_base} and {self.n_other}, got {rows_base.shape[1]} and {rows_other.shape[1]}"
            )
        if not (np.isfinite(rows_base).all() and np.isfinite(rows_other).all()):
            raise NumericalError("the token embedding holds NaN or Inf values")
        rb = np.ascontiguousarray(rows_base, dtype=np.float32)
        ro = np.ascontiguousarray(rows_other, dtype=np.float32)
        # cross += ro' rb by SGEMM with beta=1, in place: no (n_other, n_base)
        # temporary per block. ro.T and rb.T are Fortran-ordered views, so
        # BLAS reads the blocks without copies.
        out = sgemm(1.0, ro.T, rb.T, trans_b=1, beta=1.0, c=self._cross, overwrite_c=1)
        if not np.shares_memory(out, self._cross):  # pragma: no cover - ruled out by the layouts above
            raise RuntimeError("sgemm did not accumulate into the cosine buffer")
        self._sq_base += np.einsum("ij,ij->j", rb, rb, dtype=np.float64)
        self._sq_other += np.einsum("ij,ij->j", ro, ro, dtype=np.float64)
        self.n_rows += rb.shape[0]

    def cosines(self) -> np.ndarray:
        """``(n_other, n_base)`` float32 cosine matrix (consumes the accumulator's buffer)."""
        norm_o = np.sqrt(self._sq_other)
        norm_b = np.sqrt(self._sq_base)
        if (norm_o == 0).any() or (norm_b == 0).any():
            raise NumericalError("a hidden dimension of the token embedding is all zero on the shared tokens; it cannot be aligned")
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
