"""Running column statistics of embedding rows, for the alignment (:mod:`awmtrace.core.align`).

Sums and sums of squares per column, accumulated a block of rows at a time in
float64 from float32 partial sums over short slabs (at most :data:`SLAB_ROWS`
terms each, so a partial's rounding stays near float32's own), in units of a
power of two that keeps extreme embeddings inside float32's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from awmtrace.errors import NumericalError

__all__ = ["ColumnStats", "EmbeddingStats", "SAFE_EXPONENT", "SLAB_ROWS"]

#: Row blocks are brought within ``2**-SAFE_EXPONENT .. 2**SAFE_EXPONENT`` by exact power-of-two scaling.
SAFE_EXPONENT = 30
#: Rows summed in float32 before a partial sum is added in float64.
SLAB_ROWS = 256


@dataclass
class ColumnStats:
    """Running column statistics of one model's rows, in units of ``2**exponent``."""

    n: int
    exponent: int | None = None
    sums: np.ndarray = field(init=False)
    sq: np.ndarray = field(init=False)
    samples: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (exponent when stored, rows)

    def __post_init__(self) -> None:
        self.sums = np.zeros(self.n, dtype=np.float64)
        self.sq = np.zeros(self.n, dtype=np.float64)

    def add(self, rows: np.ndarray) -> None:
        """Add a block's column sums and sums of squares (rows in this side's units): float32 over slabs of
        :data:`SLAB_ROWS` rows, those added in float64 (a float64 pass over the block costs 4x as much)."""
        for start in range(0, rows.shape[0], SLAB_ROWS):
            slab = rows[start : start + SLAB_ROWS]
            self.sums += slab.sum(axis=0)
            self.sq += np.einsum("ij,ij->j", slab, slab)

    def block_exponent(self, rows: np.ndarray) -> int:
        """The exponent this side uses from this block on (raised when the block would leave the safe range)."""
        peak = float(max(np.max(rows, initial=0.0), -np.min(rows, initial=0.0)))
        if not math.isfinite(peak):  # max/min propagate NaN and Inf: this is the finiteness check too
            raise NumericalError("the token embedding holds NaN or Inf values")
        if peak == 0.0:
            return self.exponent if self.exponent is not None else 0
        exp = math.frexp(peak)[1]  # peak = m * 2**exp, 0.5 <= m < 1
        if self.exponent is None:
            return 0 if -SAFE_EXPONENT <= exp <= SAFE_EXPONENT else exp
        return exp if exp - self.exponent > SAFE_EXPONENT else self.exponent


@dataclass(frozen=True)
class EmbeddingStats:
    """Column statistics of the shared-token rows, in the accumulator's (power-of-two scaled) units.

    ``sum_*``/``sq_*``: ``(n,)`` float64 column sums and sums of squares;
    ``sample_*``: ``(m, n)`` float32 evenly spaced rows (the same tokens on both sides).
    """

    n_rows: int
    sum_base: np.ndarray
    sum_other: np.ndarray
    sq_base: np.ndarray
    sq_other: np.ndarray
    sample_base: np.ndarray
    sample_other: np.ndarray

    def centred_sq(self, side: str) -> np.ndarray:
        """``(n,)`` squared norms of the centred columns (``sum (x - mean)^2``)."""
        s, q = (self.sum_base, self.sq_base) if side == "base" else (self.sum_other, self.sq_other)
        return np.maximum(q - s * s / max(self.n_rows, 1), 0.0)
