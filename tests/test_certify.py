"""The certified LAP (awmtrace.core.certify): the bound holds, a proof gives the full LAP's answer, no proof where none is due."""

from __future__ import annotations

import numpy as np
import pytest

from awmtrace.core.align import CosineAccumulator, choose_alignment
from awmtrace.core.certify import (
    MARGIN,
    ColumnCosines,
    MatchedAccumulator,
    PairAccumulator,
    abs_cosines,
    candidate,
    certified,
    may_certify,
    suspects,
)


def _embeddings(v: int, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A base embedding and a permuted, sign-flipped, noisy copy: (base, other, true index, true signs)."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal((v, n)) + 0.3 * rng.standard_normal((v, 1))).astype(np.float32)  # shared direction: columns correlate
    index = rng.permutation(n)
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    other = base[:, index] * signs + noise * rng.standard_normal((v, n)).astype(np.float32)
    return base, other.astype(np.float32), index, signs


def _cos64(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a = a / np.linalg.norm(a, axis=0)
    return a.T @ a


def test_column_cosines_are_exact_at_any_scale_and_a_zero_column_bounds_nothing() -> None:
    rng = np.random.default_rng(0)
    e = (rng.standard_normal((300, 12)) + rng.standard_normal((300, 1))).astype(np.float32)
    want = np.abs(_cos64(e))
    np.fill_diagonal(want, 0.0)
    for scale in (1.0, 1e30, 1e-30):  # near the float32 limits a Gram would overflow or vanish without the block scaling
        cc = ColumnCosines(12)
        for start in range(0, 300, 64):
            cc.add(e[start : start + 64] * np.float32(scale))
        assert abs_cosines(cc.gram()) == pytest.approx(want, abs=1e-5)
        assert cc.max_other() == pytest.approx(want.max(axis=0), abs=1e-5)
    e[:, 3] = 0.0
    cc = ColumnCosines(12)
    cc.add(e)
    cos = abs_cosines(cc.gram())
    assert np.all(cos[3, np.arange(12) != 3] == 1.0) and np.all(cos[np.arange(12) != 3, 3] == 1.0) and cos[3, 3] == 0.0


def _full(base: np.ndarray, other: np.ndarray, mode: str = "lap") -> object:
    acc = CosineAccumulator(base.shape[1], other.shape[1], base.shape[0])
    for s in range(0, base.shape[0], 500):
        acc.add(base[s : s + 500], other[s : s + 500])
    return choose_alignment(acc, mode)


def _matched(base: np.ndarray, other: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, MatchedAccumulator]:
    acc = MatchedAccumulator(index, base.shape[1], base.shape[0])
    for s in range(0, base.shape[0], 500):
        acc.add(base[s : s + 500], other[s : s + 500])
    return acc.matched(), acc


@pytest.mark.parametrize(("n", "noise"), [(16, 0.05), (64, 0.3), (48, 0.6)])
def test_a_certified_candidate_is_the_full_lap_solution(n: int, noise: float) -> None:
    base, other, index, signs = _embeddings(3000, n, noise, seed=n)
    cand = candidate(base[::7], other[::7])
    assert cand is not None and np.array_equal(cand, index)
    matched, acc = _matched(base, other, cand)
    bound = ColumnCosines(n)
    bound.add(base)
    cos = abs_cosines(bound.gram())
    i, j = suspects(matched, cand, cos)
    assert certified(matched, cand, cos, _exact(base, other, i, j))
    full = _full(base, other)
    assert np.array_equal(full.index, cand)  # type: ignore[attr-defined]
    assert np.array_equal(full.signs, np.where(matched < 0, -1.0, 1.0))  # type: ignore[attr-defined]
    assert full.matched == pytest.approx(matched, abs=1e-5)  # type: ignore[attr-defined]
    # the same column statistics as the full accumulator
    assert acc.stats().sq_base == pytest.approx(_full_stats(base, other).sq_base, rel=1e-6)


def _full_stats(base: np.ndarray, other: np.ndarray) -> object:
    acc = CosineAccumulator(base.shape[1], other.shape[1], base.shape[0])
    acc.add(base, other)
    return acc.stats()


def test_the_bound_holds_for_every_pair_of_columns() -> None:
    # |cos(b_j, a_i)| <= |c_j| g + sqrt(1 - c_j^2) sqrt(1 - g^2), g = |cos(a_i, a_k)|, for all i != k = m(j)
    for seed in range(5):
        base, other, index, _ = _embeddings(400, 24, 0.8, seed)
        cos = _cos64(np.concatenate([base, other], axis=1))[24:, :24]  # (other, base)
        self_cos = np.abs(_cos64(base))
        for j in range(24):
            k = index[j]
            c = abs(cos[j, k])
            g = self_cos[:, k]
            bound = c * g + np.sqrt(1 - c * c) * np.sqrt(np.maximum(1 - g * g, 0))
            others = np.arange(24) != k
            assert np.all(np.abs(cos[j, others]) <= bound[others] + 1e-9)


def test_no_proof_for_unrelated_or_weakly_related_embeddings() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2000, 32)).astype(np.float32)
    b = rng.standard_normal((2000, 32)).astype(np.float32)
    assert candidate(a[::5], b[::5]) is None  # unrelated: the row-wise best matches collide or are weak
    base, other, index, _ = _embeddings(2000, 32, 1.5, seed=4)  # related, but too noisy for a proof
    matched, _ = _matched(base, other, index)
    bound = ColumnCosines(32)
    bound.add(base)
    assert not may_certify(matched) and not certified(matched, index, abs_cosines(bound.gram()))


def test_a_wrong_candidate_is_never_certified() -> None:
    base, other, index, _ = _embeddings(3000, 20, 0.05, seed=5)
    wrong = index.copy()
    wrong[[0, 1]] = wrong[[1, 0]]
    matched, _ = _matched(base, other, wrong)
    bound = ColumnCosines(20)
    bound.add(base)
    cos = abs_cosines(bound.gram())
    i, j = suspects(matched, wrong, cos)
    assert i.size and not certified(matched, wrong, cos, _exact(base, other, i, j))  # the swapped columns are suspects, and lose
    assert not certified(*_matched(base, other, index)[:1], np.r_[index[:-1], index[0]], cos)  # not one-to-one


def _exact(base: np.ndarray, other: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    acc = PairAccumulator(i, j, base.shape[1], other.shape[1], base.shape[0])
    acc.add(base, other)
    return acc.cosines()


def test_near_parallel_columns_are_checked_exactly_not_given_up_on() -> None:
    # Real embeddings have pairs of columns with |cos| near 1: the bound alone cannot separate them; the exact pass does.
    base, other, index, _ = _embeddings(4000, 24, 0.05, seed=6)
    rng = np.random.default_rng(6)
    base[:, 1] = 0.95 * base[:, 0] + 0.31 * rng.standard_normal(4000).astype(np.float32)  # |cos| about 0.95
    noise = 0.14 * rng.standard_normal((4000, 24)).astype(np.float32)  # matched cosines about 0.99
    other = base[:, index] * np.where(rng.random(24) < 0.5, -1.0, 1.0).astype(np.float32) + noise
    matched, _ = _matched(base, other, index)
    bound = ColumnCosines(24)
    bound.add(base)
    cos = abs_cosines(bound.gram())
    i, j = suspects(matched, index, cos)
    assert i.size  # columns 0 and 1 cannot be told apart by the bound
    assert not certified(matched, index, cos)  # nor without the exact check
    assert certified(matched, index, cos, _exact(base, other, i, j))
    assert np.array_equal(_full(base, other).index, index)  # type: ignore[attr-defined]


def test_may_certify_threshold_is_where_the_bound_at_zero_meets_the_margin() -> None:
    c = (MARGIN + np.sqrt(2 - MARGIN**2)) / 2
    assert np.sqrt(1 - c * c) == pytest.approx(c - MARGIN)
    assert may_certify(np.array([c + 1e-6, 0.99])) and not may_certify(np.array([c - 1e-6, 0.99]))


def test_an_unrelated_pair_is_told_from_a_small_gate_and_a_related_one_passes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from awmtrace.core import certify

    calls: list[tuple[int, int]] = []
    real = certify._best_cosines

    def counted(sample_base: np.ndarray, sample_other: np.ndarray) -> object:
        calls.append(sample_other.shape)
        return real(sample_base, sample_other)

    monkeypatch.setattr(certify, "_best_cosines", counted)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((1024, 1024)).astype(np.float32), rng.standard_normal((1024, 1024)).astype(np.float32)
    assert candidate(a, b) is None
    assert calls == [(certify.GATE_ROWS, certify.GATE_ROWS)]  # the gate alone: no (1024, 1024) cosine matrix
    calls.clear()
    base, other, index, _ = _embeddings(1024, 1024, 0.3, seed=6)
    got = candidate(base, other)
    assert got is not None and np.array_equal(got, index)
    assert calls == [(certify.GATE_ROWS, certify.GATE_ROWS), (1024, 1024)]
