"""Hidden-dimension alignment and layer matching recover planted truth."""

from __future__ import annotations

import numpy as np
import pytest

from awmtrace.core.align import (
    CosineAccumulator,
    assign_dimensions,
    centred_cross,
    choose_alignment,
    lap_quality,
    match_layers,
    orthogonal_quality,
    procrustes,
)
from awmtrace.errors import NumericalError, VocabularyError


def cosines(base: np.ndarray, other: np.ndarray, block: int = 37) -> np.ndarray:
    acc = CosineAccumulator(base.shape[1], other.shape[1])
    for start in range(0, base.shape[0], block):
        acc.add(base[start : start + block], other[start : start + block])
    return acc.cosines()


def test_streamed_cosines_equal_direct_computation() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 24)).astype(np.float32)
    b = rng.standard_normal((300, 16)).astype(np.float32)
    direct = (b / np.linalg.norm(b, axis=0)).T @ (a / np.linalg.norm(a, axis=0))
    np.testing.assert_allclose(cosines(a, b), direct, atol=1e-5)


def test_planted_permutation_signs_and_scale_are_recovered() -> None:
    rng = np.random.default_rng(1)
    tokens, hidden = 2000, 64
    e = rng.standard_normal((tokens, hidden)).astype(np.float32)
    perm = rng.permutation(hidden)
    signs = rng.choice([-1.0, 1.0], size=hidden).astype(np.float32)
    # Other model: dim j is base dim perm[j] times signs[j], scaled, with fine-tune noise.
    other = (e[:, perm] * signs * 4.0 + 0.3 * rng.standard_normal((tokens, hidden))).astype(np.float32)
    index, got_signs, matched = assign_dimensions(cosines(e, other))
    np.testing.assert_array_equal(index, perm)
    np.testing.assert_array_equal(got_signs, signs)
    assert np.all(np.abs(matched) > 0.9)


def test_rectangular_assignment_finds_the_kept_dimensions() -> None:
    rng = np.random.default_rng(2)
    e = rng.standard_normal((1500, 48)).astype(np.float32)
    keep = np.sort(rng.choice(48, size=32, replace=False))
    shuffled = rng.permutation(keep)
    index, signs, _ = assign_dimensions(cosines(e, e[:, shuffled]))
    np.testing.assert_array_equal(index, shuffled)
    assert np.all(signs == 1)


def test_other_wider_than_base_is_refused() -> None:
    with pytest.raises(ValueError, match="wider"):
        CosineAccumulator(8, 16)
    with pytest.raises(ValueError):
        assign_dimensions(np.zeros((5, 3)))


def test_zero_dimension_and_nan_rows_are_errors() -> None:
    acc = CosineAccumulator(4, 4)
    rows = np.ones((10, 4), np.float32)
    zero = rows.copy()
    zero[:, 2] = 0
    acc.add(rows, zero)
    with pytest.raises(NumericalError, match="all zero"):
        acc.cosines()
    bad = rows.copy()
    bad[3, 1] = np.inf
    with pytest.raises(NumericalError, match="NaN or Inf"):
        CosineAccumulator(4, 4).add(rows, bad)


def test_layer_matching_recovers_planted_depth_pruning() -> None:
    rng = np.random.default_rng(3)
    kept = [0, 2, 3, 5, 7]  # a 5-layer model pruned from 8 layers
    scores = rng.uniform(0.0, 0.05, size=(8, 5))
    for j, i in enumerate(kept):
        scores[i, j] = 0.9 - 0.01 * j
    assert match_layers(scores) == [(i, j) for j, i in enumerate(kept)]
    assert match_layers(scores.T) == [(j, i) for j, i in enumerate(kept)]


def test_layer_matching_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError):
        match_layers(np.zeros((0, 3)))
    with pytest.raises(NumericalError):
        match_layers(np.array([[np.nan, 1.0]]))


def _haar(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _accumulate(base: np.ndarray, other: np.ndarray, block: int = 113) -> CosineAccumulator:
    acc = CosineAccumulator(base.shape[1], other.shape[1], base.shape[0])
    for start in range(0, base.shape[0], block):
        acc.add(base[start : start + block], other[start : start + block])
    return acc


def test_procrustes_recovers_a_planted_rotation_exactly() -> None:
    rng = np.random.default_rng(10)
    e = (rng.standard_normal((1500, 48)) * rng.uniform(0.2, 3.0, 48) + 0.5).astype(np.float32)  # anisotropic, off-centre
    q = _haar(48, 11)
    acc = _accumulate(e, (e @ q * 7.0).astype(np.float32))
    stats = acc.stats()
    fit = procrustes(centred_cross(acc.cosines(), stats))
    assert fit.rotation.shape == (48, 48) and fit.rank == 48
    np.testing.assert_allclose(fit.rotation, q, atol=2e-4)
    assert orthogonal_quality(fit, stats) == pytest.approx(1.0, abs=1e-5)


def test_procrustes_semi_orthogonal_when_the_other_model_is_narrower() -> None:
    rng = np.random.default_rng(12)
    narrow = rng.standard_normal((2000, 24))
    extra = rng.standard_normal((2000, 16))
    # Make the base's extra dimensions exactly uncorrelated with the narrow embedding (centred), so R is determined.
    narrow -= narrow.mean(axis=0)
    extra -= extra.mean(axis=0)
    extra -= narrow @ np.linalg.lstsq(narrow, extra, rcond=None)[0]
    q = _haar(40, 13)
    base = (np.concatenate([narrow, extra], axis=1) @ q).astype(np.float32)  # (2000, 40): narrow rotated into a wider space
    acc = _accumulate(base, (narrow * 0.25).astype(np.float32))
    stats = acc.stats()
    fit = procrustes(centred_cross(acc.cosines(), stats))
    assert fit.rotation.shape == (40, 24)
    np.testing.assert_allclose(fit.rotation.T @ fit.rotation, np.eye(24), atol=1e-5)  # orthonormal columns
    np.testing.assert_allclose(fit.rotation, q.T[:, :24], atol=2e-4)  # E_other ~ s E_base R
    assert orthogonal_quality(fit, stats) == pytest.approx(1.0, abs=1e-4)


def test_quality_figures_are_scale_invariant_and_bounded() -> None:
    rng = np.random.default_rng(14)
    a = rng.standard_normal((800, 32)).astype(np.float32)
    b = rng.standard_normal((800, 32)).astype(np.float32)
    figures = []
    for scale in (1.0, 1e-3, 1e4):
        acc = _accumulate(a * np.float32(scale), b)
        stats = acc.stats()
        cos = acc.cosines()
        index, _, matched = assign_dimensions(cos)
        q_lap = lap_quality(matched, index, stats)
        q_orth = orthogonal_quality(procrustes(centred_cross(cos, stats)), stats)
        figures.append((q_lap, q_orth))
        assert 0.0 <= q_lap <= q_orth <= 1.0  # a signed permutation is one of the rotations Procrustes searches
    np.testing.assert_allclose(figures, [figures[0]] * 3, rtol=1e-4)
    # Unrelated embeddings: the LAP finds next to nothing, a fitted rotation finds ~0.85 sqrt(n / rows) by chance.
    assert figures[0][0] < 0.15 and 0.1 < figures[0][1] < 0.35


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_extreme_embedding_values_give_the_same_alignment(scale: float) -> None:
    rng = np.random.default_rng(15)
    e = rng.standard_normal((1200, 32)).astype(np.float32)
    perm = rng.permutation(32)
    other = (-e[:, perm] + 0.1 * rng.standard_normal((1200, 32))).astype(np.float32)
    ref = _accumulate(e, other).cosines().copy()
    # Both sides scaled: their products (1e60 or 1e-60) overflow or underflow float32.
    huge = _accumulate(e * np.float32(scale), other * np.float32(scale))
    got = huge.cosines()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    index, signs, _ = assign_dimensions(got)
    np.testing.assert_array_equal(index, perm)
    assert np.all(signs == -1)


def test_values_growing_mid_stream_are_rescaled_not_overflowed() -> None:
    rng = np.random.default_rng(16)
    e = rng.standard_normal((900, 16)).astype(np.float32)
    q = _haar(16, 17).astype(np.float32)
    grown = e.copy()
    grown[600:] *= np.float32(1e30)  # the last blocks hold values whose products overflow float32
    acc = _accumulate(grown, grown @ q, block=100)
    choice = choose_alignment(acc, "orthogonal")
    assert choice.rotation is not None and np.isfinite(choice.rotation).all()
    np.testing.assert_allclose(choice.rotation, q, atol=1e-3)
    # The old unscaled code path would have produced inf cosines here.
    with np.errstate(all="ignore"):
        assert not np.isfinite(grown.T @ grown).all()


def test_auto_stops_at_lap_for_a_permuted_copy_and_finds_a_rotation() -> None:
    rng = np.random.default_rng(18)
    e = rng.standard_normal((2000, 64)).astype(np.float32)
    perm = rng.permutation(64)
    lap = choose_alignment(_accumulate(e, e[:, perm] * np.float32(-2.0)), "auto")
    assert lap.method == "lap" and lap.rotation is None
    assert lap.quality["embedding_cka"] is None and lap.quality["orthogonal"] is None  # nothing beyond the LAP
    q = _haar(64, 19).astype(np.float32)
    rot = choose_alignment(_accumulate(e, e @ q), "auto")
    assert rot.method == "orthogonal" and rot.quality["orthogonal"] > 0.999
    np.testing.assert_allclose(rot.rotation, q, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n_a", "n_b", "rows"), [(32, 32, 2000), (64, 48, 1000), (128, 128, 300)])
def test_auto_keeps_independent_embeddings_on_lap(seed: int, n_a: int, n_b: int, rows: int) -> None:
    rng = np.random.default_rng(100 + seed)
    a = (rng.standard_normal((rows, n_a)) * rng.uniform(0.1, 2.0, n_a)).astype(np.float32)
    b = (rng.standard_normal((rows, n_b)) * rng.uniform(0.1, 2.0, n_b)).astype(np.float32)
    choice = choose_alignment(_accumulate(a, b), "auto")
    assert choice.method == "lap" and choice.rotation is None


def test_forced_orthogonal_needs_more_shared_rows_than_dimensions() -> None:
    rng = np.random.default_rng(20)
    e = rng.standard_normal((40, 48)).astype(np.float32)
    with pytest.raises(VocabularyError, match="needs at least 49 shared tokens"):
        choose_alignment(_accumulate(e, e), "orthogonal")
    auto = choose_alignment(_accumulate(e, e), "auto")
    assert auto.method == "lap"
    with pytest.raises(ValueError, match="mode"):
        choose_alignment(_accumulate(e, e), "rotate")
