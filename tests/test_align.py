"""Hidden-dimension alignment and layer matching recover planted truth."""

from __future__ import annotations

import numpy as np
import pytest

from awmtrace.core.align import CosineAccumulator, assign_dimensions, match_layers
from awmtrace.errors import NumericalError


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
