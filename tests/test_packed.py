"""bfloat16 packed Grams (awmtrace.core.packed) against float64 oracles: rounding, packing, the aligned cross term."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from scipy.linalg.blas import ssyrk

from awmtrace.core.cka import hsic_from_sums, unbiased_hsic_gram
from awmtrace.core.packed import PackedGram, gathered_cross, pack_gram, packed_size, round_bf16, widen_bf16


def _syrk(x: np.ndarray) -> np.ndarray:
    """SYRK's result as the cache gets it: upper triangle of X X' in a Fortran buffer, junk below the diagonal."""
    out = np.full((x.shape[0], x.shape[0]), np.nan, dtype=np.float32, order="F")
    return np.asarray(ssyrk(1.0, np.asfortranarray(x), beta=0.0, c=out, overwrite_c=1))


def _unpack(gram: PackedGram) -> np.ndarray:
    full = gram.full()
    return widen_bf16(full, np.empty(full.shape, dtype=np.float32)).astype(np.float64)


def test_round_and_widen_bf16_are_nearest_and_exact() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000), [0.0, -0.0, 1.0, -2.5]])
    x = x.astype(np.float32)
    bits = round_bf16(x, np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint32))
    got = widen_bf16(bits, np.empty(x.shape, np.float32))
    want = x.astype(ml_dtypes.bfloat16).astype(np.float32)  # ml_dtypes rounds to nearest, ties to even
    assert np.array_equal(got, want)
    # widening every bit pattern of a finite bfloat16 is exact
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(every.view(ml_dtypes.bfloat16).astype(np.float32))
    wide = widen_bf16(every, np.empty(every.shape, np.float32))
    assert np.array_equal(wide[finite], every.view(ml_dtypes.bfloat16).astype(np.float32)[finite])


@pytest.mark.parametrize(("n", "block"), [(5, 32), (31, 32), (32, 32), (33, 32), (100, 7), (257, 64)])
def test_pack_gram_is_the_rounded_symmetric_zero_diagonal_gram(n: int, block: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, 7)) + 0.5).astype(np.float32)
    bits = np.empty(packed_size(n, block), np.uint16)
    stats = pack_gram(_syrk(x), bits, block)
    assert packed_size(n, block) <= n * (n + block) // 2 + block * block  # about half of n^2
    k = _unpack(PackedGram(bits, n, block))
    want = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(want, 0.0)
    assert np.array_equal(k, k.T) and not np.diag(k).any()
    off = ~np.eye(n, dtype=bool)
    assert np.all(np.abs(k - want)[off] <= 2.0**-8 * np.abs(want)[off] + 1e-6)  # half a bfloat16 unit, plus float32 rounding
    # the statistics are those of the rounded matrix, exactly what a pair reads
    assert stats.rows == pytest.approx(k.sum(axis=1), rel=1e-6, abs=1e-6)
    assert stats.total == pytest.approx(k.sum(), rel=1e-6)
    assert stats.sumsq == pytest.approx((k * k).sum(), rel=1e-6)


def _pair(n_base: int, n_other: int, seed: int, block: int = 32) -> tuple[PackedGram, PackedGram]:
    rng = np.random.default_rng(seed)
    kb, ko = np.empty(packed_size(n_base, block), np.uint16), np.empty(packed_size(n_other, block), np.uint16)
    pack_gram(_syrk(rng.standard_normal((n_base, 9)).astype(np.float32) + 0.2), kb, block)
    pack_gram(_syrk(rng.standard_normal((n_other, 9)).astype(np.float32) - 0.1), ko, block)
    return PackedGram(kb, n_base, block), PackedGram(ko, n_other, block)


@pytest.mark.parametrize(
    ("n_base", "n_other", "gather", "signed", "block"),
    [(40, 40, False, False, 32), (40, 40, False, True, 7), (40, 40, True, False, 32), (64, 64, True, True, 16), (50, 33, True, True, 8)],
)
def test_gathered_cross_matches_the_gathered_signed_product(n_base: int, n_other: int, gather: bool, signed: bool, block: int) -> None:
    kb, ko = _pair(n_base, n_other, seed=n_base + n_other, block=block)
    rng = np.random.default_rng(7)
    index = rng.permutation(n_base)[:n_other] if gather else None
    signs = np.where(rng.random(n_other) < 0.5, -1.0, 1.0) if signed else None
    got = gathered_cross(kb, ko, index, signs, base_stats=True)
    kbase, kother = _unpack(kb), _unpack(ko)
    g = kbase if index is None else kbase[np.ix_(index, index)]
    s = np.ones(n_other) if signs is None else signs
    lo = kother * s[:, None] * s[None, :]
    assert got.trace == pytest.approx(float((g * lo).sum()), rel=1e-6, abs=1e-6)
    assert got.base is not None
    assert got.base.rows == pytest.approx(g.sum(axis=1), rel=1e-6, abs=1e-6)
    assert got.base.sumsq == pytest.approx(float((g * g).sum()), rel=1e-6)
    if signs is None:
        assert got.other_rows is None
    else:
        assert got.other_rows == pytest.approx(lo.sum(axis=1), rel=1e-6, abs=1e-5)
    # and so UCKA from these terms is the float64 unbiased HSIC of the two rounded, aligned matrices
    rows_o = lo.sum(axis=1)
    hxy = hsic_from_sums(got.trace, got.base.total, float(rows_o.sum()), float(got.base.rows @ rows_o), n_other)
    assert hxy == pytest.approx(unbiased_hsic_gram(g, lo), rel=1e-5, abs=1e-9)


def test_gathered_cross_refuses_mismatched_shapes() -> None:
    kb, ko = _pair(20, 10, seed=1)
    with pytest.raises(ValueError, match="one size"):
        gathered_cross(kb, ko)
    with pytest.raises(ValueError, match="one entry per dimension"):
        gathered_cross(kb, ko, np.arange(9))
    with pytest.raises(ValueError, match="holds"):
        PackedGram(np.zeros(10, np.uint16), 20)
