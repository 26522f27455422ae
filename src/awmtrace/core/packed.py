"""Gram matrices stored as bfloat16, and the UCKA cross term between two of them under an alignment.

A cached Gram (:mod:`awmtrace.collections`) is the full symmetric ``K~ = X X'``
with its diagonal zeroed, each entry rounded to the nearest bfloat16 and kept
as its 16 bits. bfloat16 is the top half of a float32, so
widening is a shift and no scale is needed (same exponent range as float32);
the 8 significant bits give each entry a relative error below ``2**-9``,
which the ``n^2`` independent roundings average down to about ``2**-9 / n``
of the UCKA's cross term. Every statistic of a stored Gram (row sums, total,
sum of squares) is taken from the rounded values, so a Gram compared with
itself gives exactly 1 and the U-centring cancels as it does in float32.

Layout (:class:`PackedGram`): the rows are cut into blocks of ``block`` rows;
block ``r0:r1`` keeps ``K~[r0:r1, :r1]``, the rows left of and on the
diagonal (the diagonal square holds both of its triangles), so a Gram takes
about half of ``n^2`` values. BLAS SYRK leaves the upper triangle of ``X X'``
in a Fortran-ordered buffer, which read as C order is exactly those rows:
each block is rounded while in cache and written as it is. The full matrix,
which gathering rows and columns by an alignment index needs, is rebuilt by
one transposed copy (:meth:`PackedGram.full`).

Cross term: ``tr(K~_b[idx][:, idx] D L~ D) = sum_{i != j} K~_b[idx_i, idx_j] s_i s_j L~_ij``
for the base Gram ``K~_b`` gathered by the alignment index and the other
model's Gram ``L~`` signed by ``D = diag(s)``. Both are symmetric with zero
diagonals, so the sum is twice its strict lower triangle: each block of rows
gathers, flips signs (an XOR of the sign bit, ``s_i s_j < 0`` exactly when
one of the two bits is set), widens and multiplies only the columns left of
the block, about half the matrix.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from awmtrace.core.cka import _rowwise_dot64

__all__ = ["CrossTerms", "PackedGram", "PackedStats", "gathered_cross", "pack_gram", "packed_size", "round_bf16", "sign_bits", "widen_bf16"]

#: Rows of a Gram handled at a time: 64 rows of a 4096-wide float32 matrix are 1 MiB, so the several passes
#: over a block (round, mirror, widen, reduce) run in cache.
BLOCK_ROWS = 32
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class PackedStats:
    """Row sums ``(n,)`` float64, total and sum of squares of a packed Gram (its rounded values, zero diagonal)."""

    rows: np.ndarray
    total: float
    sumsq: float


def round_bf16(x: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Round float32 ``x`` to bfloat16 bits (nearest, ties to even) into uint16 ``out`` of the same shape.

    ``tmp``: uint32 scratch of the same shape. Finite inputs only (NaN would
    not stay NaN): callers check finiteness first.
    """
    u = x.view(np.uint32)
    np.right_shift(u, 16, out=tmp)
    np.bitwise_and(tmp, 1, out=tmp)
    np.add(tmp, 0x7FFF, out=tmp)
    np.add(tmp, u, out=tmp)
    np.right_shift(tmp, 16, out=tmp)
    np.copyto(out, tmp, casting="unsafe")
    return out


def widen_bf16(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 ``out`` of the same shape (exact)."""
    u = out.view(np.uint32)
    np.copyto(u, bits)
    np.left_shift(u, 16, out=u)
    return out


def sign_bits(signs: np.ndarray) -> np.ndarray:
    """``(n,)`` uint16: ``0x8000`` where ``signs < 0``, else 0 (XOR flips a bfloat16's sign)."""
    return np.where(np.asarray(signs) < 0, 0x8000, 0).astype(np.uint16)


def packed_size(n: int, block: int = BLOCK_ROWS) -> int:
    """Values a packed ``(n, n)`` Gram holds: ``sum over blocks of rows x (r0 + rows)``."""
    return sum((min(n, r0 + block) - r0) * min(n, r0 + block) for r0 in range(0, n, block))


@dataclass(frozen=True)
class PackedGram:
    """A packed Gram (module docstring): ``bits`` ``(packed_size(n, block),)`` uint16, memory-mapped or not."""

    bits: np.ndarray
    n: int
    block: int = BLOCK_ROWS

    def __post_init__(self) -> None:
        want = packed_size(self.n, self.block)
        if self.bits.shape != (want,):
            raise ValueError(f"a packed ({self.n}, {self.n}) Gram in blocks of {self.block} holds {want} values, got {self.bits.shape}")

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(r0, r1, K~[r0:r1, :r1])`` for each block of rows, in order (views, no copies)."""
        start = 0
        for r0 in range(0, self.n, self.block):
            r1 = min(self.n, r0 + self.block)
            size = (r1 - r0) * r1
            yield r0, r1, self.bits[start : start + size].reshape(r1 - r0, r1)
            start += size

    def full(self, out: np.ndarray | None = None) -> np.ndarray:
        """The whole symmetric ``(n, n)`` uint16 matrix: each block, and its transpose above the diagonal."""
        out = np.empty((self.n, self.n), dtype=np.uint16) if out is None else out
        for r0, r1, blk in self.blocks():
            out[r0:r1, :r1] = blk
            out[:r0, r0:r1] = blk[:, :r0].T
        return out


def pack_gram(upper: np.ndarray, out: np.ndarray, block: int = BLOCK_ROWS) -> PackedStats:
    """Pack SYRK's result into ``out``, ``(packed_size(n, block),)`` uint16 (see :class:`PackedGram`).

    ``upper``: ``(n, n)`` float32, Fortran-ordered, holding ``X X'`` in its
    upper triangle (what lies below the diagonal is not read). Returns the
    statistics of the rounded zero-diagonal matrix. Rounding here is to
    nearest with ties away from zero (adding half a unit to the bit pattern):
    a tie needs the 16 low bits to be exactly ``0x8000``, and the rounded
    values are what every statistic is taken from.
    """
    n = upper.shape[0]
    if upper.shape != (n, n) or not upper.flags.f_contiguous:
        raise ValueError(f"expected a Fortran-ordered (n, n) Gram, got {upper.shape}")
    packed = PackedGram(out, n, block)
    lower = upper.T.view(np.uint32)  # C-ordered: row r holds X X' [r, :r + 1]
    scratch = np.empty(block * n, dtype=np.uint32)
    rows = np.zeros(n, dtype=np.float64)
    sumsq = 0.0
    top = 1 if _LITTLE else 0  # which uint16 of a uint32 holds its high half
    above = np.triu_indices(block)
    for r0, r1, blk in packed.blocks():
        m = r1 - r0
        t = scratch[: m * r1].reshape(m, r1)
        np.add(lower[r0:r1, :r1], 0x8000, out=t)
        np.bitwise_and(t, 0xFFFF0000, out=t)
        # In the diagonal square only SYRK's strict lower part is kept (the diagonal zeroed, the rest replaced by
        # the mirror below): t then holds the block's strict lower part Lo, exactly what the statistics need.
        t[:, r0:r1][above if m == block else np.triu_indices(m)] = 0
        np.copyto(blk, t.view(np.uint16)[:, top::2])
        square = blk[:, r0:r1]
        np.bitwise_or(square, square.T.copy(), out=square)
        # K~ = Lo + Lo' over the strict lower part Lo: rows of K~ are the rows plus the columns of Lo.
        w = t.view(np.float32)
        rows[r0:r1] += w.sum(axis=1, dtype=np.float64)
        rows[:r1] += w.sum(axis=0, dtype=np.float64)
        sumsq += 2.0 * _rowwise_dot64(w, w)
    return PackedStats(rows=rows, total=float(rows.sum()), sumsq=sumsq)


def _add_block_stats(kb: np.ndarray, r0: int, rows: np.ndarray, signs: np.ndarray | None) -> float:
    """Add a gathered block's part of the row sums to ``rows``; returns its part of the sum of squares.

    ``kb``: rows ``r0:r0 + m`` of the gathered base, columns ``:r0 + m``, signed by ``signs`` when given (undone here, in place).
    """
    r1 = r0 + kb.shape[0]
    if signs is not None:
        kb *= signs[r0:r1, None]
        kb *= signs[None, :r1]
    rows[r0:r1] += kb.sum(axis=1, dtype=np.float64)
    rows[:r0] += kb[:, :r0].sum(axis=0, dtype=np.float64)
    return 2.0 * _rowwise_dot64(kb[:, :r0], kb[:, :r0]) + _rowwise_dot64(kb[:, r0:], kb[:, r0:])


@dataclass(frozen=True)
class CrossTerms:
    """What :func:`gathered_cross` returns.

    ``trace``: ``tr(K~_g D L~ D)`` with ``K~_g`` the gathered base; ``base``:
    the statistics of ``K~_g`` when they were asked for (a rectangular
    gather changes them), else ``None``; ``other_rows``: ``D L~ D 1``
    ``(n_other,)`` float64 when signs were given, else ``None``.
    """

    trace: float
    base: PackedStats | None
    other_rows: np.ndarray | None


def _gather(
    full: np.ndarray, index: np.ndarray, bits: np.ndarray | None, r0: int, r1: int, full_rows: np.ndarray, gathered: np.ndarray
) -> np.ndarray:
    """Rows ``r0:r1``, columns ``:r1`` of the full base matrix gathered by ``index``, sign bits applied: ``(r1 - r0, r1)`` uint16."""
    m = r1 - r0
    g = gathered[: m * r1].reshape(m, r1)
    np.take(np.take(full, index[r0:r1], axis=0, out=full_rows[:m]), index[:r1], axis=1, out=g)
    if bits is not None:
        _flip(g, bits, r0, r1)
    return g


def _flip(g: np.ndarray, bits: np.ndarray, r0: int, r1: int) -> None:
    # s_i s_j < 0 exactly when one of the two sign bits is set: two XORs flip the stored sign.
    np.bitwise_xor(g, bits[None, :r1], out=g)
    np.bitwise_xor(g, bits[r0:r1, None], out=g)


def gathered_cross(
    base: PackedGram,
    other: PackedGram,
    index: np.ndarray | None = None,
    signs: np.ndarray | None = None,
    *,
    base_stats: bool = False,
    base_full: np.ndarray | None = None,
) -> CrossTerms:
    """The cross term of UCKA between packed Grams under an index-and-sign alignment.

    ``base``: the packed Gram of the base (wider) model, ``n_b`` dimensions; ``other``: the other
    model's, ``n_o``; ``index``: ``(n_o,)`` base dimension of each of the other's (``None``:
    identity, ``n_b == n_o``); ``signs``: ``(n_o,)`` +-1 applied to the other (``None``: all +1).
    ``base_stats``: also return the statistics of the gathered base (needed when ``index`` is not a
    permutation). A gather needs the base's full matrix: ``base_full`` if the caller has it (:meth:`PackedGram.full`).
    """
    n_o, block = other.n, other.block
    if index is None and (base.n != n_o or base.block != block):
        raise ValueError(f"an identity alignment needs Grams of one size and layout, got {base.n} and {n_o}")
    if index is not None and index.shape != (n_o,):
        raise ValueError(f"index must have one entry per dimension of the other model ({n_o}), got {index.shape}")
    full = (base.full() if base_full is None else base_full) if index is not None else None
    base_blocks = base.blocks()
    full_rows = np.empty((block, base.n), dtype=np.uint16)
    gathered = np.empty(block * n_o, dtype=np.uint16)
    wide_b = np.empty(block * n_o, dtype=np.float32)
    wide_o = np.empty(block * n_o, dtype=np.float32)
    bits = None if signs is None else sign_bits(signs)
    s32 = None if signs is None else np.asarray(signs, dtype=np.float32)
    other_rows = None if s32 is None else np.zeros(n_o, dtype=np.float64)
    rows = np.zeros(n_o, dtype=np.float64) if base_stats else None
    trace = sumsq = 0.0
    for r0, r1, lo_bits in other.blocks():
        m = r1 - r0
        if full is not None and index is not None:
            g = _gather(full, index, bits, r0, r1, full_rows, gathered)
        else:
            g = next(base_blocks)[2]
            if bits is not None:
                signed = gathered[: m * r1].reshape(m, r1)
                np.copyto(signed, g)
                _flip(signed, bits, r0, r1)
                g = signed
        kb = widen_bf16(g, wide_b[: m * r1].reshape(m, r1))
        lo = widen_bf16(lo_bits, wide_o[: m * r1].reshape(m, r1))
        # The strict lower part (columns left of the block) counts twice, the diagonal square (both triangles) once.
        trace += 2.0 * _rowwise_dot64(kb[:, :r0], lo[:, :r0]) + _rowwise_dot64(kb[:, r0:], lo[:, r0:])
        if rows is not None:
            sumsq += _add_block_stats(kb, r0, rows, s32)
        if other_rows is not None and s32 is not None:
            # (D L~ D 1)_i = s_i (L~ s)_i, with L~ s from the block's rows and, by symmetry, its columns
            # (einsum: lo[:, :r0] is a strided view, which BLAS would copy first).
            other_rows[r0:r1] += np.einsum("ij,j->i", lo, s32[:r1])
            if r0:
                other_rows[:r0] += np.einsum("ij,i->j", lo[:, :r0], s32[r0:r1])
    if other_rows is not None and s32 is not None:
        other_rows *= s32
    stats = PackedStats(rows=rows, total=float(rows.sum()), sumsq=sumsq) if rows is not None else None
    return CrossTerms(trace=trace, base=stats, other_rows=other_rows)
