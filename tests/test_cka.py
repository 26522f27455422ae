"""The estimator against oracles: published values, a float64 reference, invariances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from awmtrace.core import cka
from awmtrace.core.cka import (
    feature_terms,
    gram_terms,
    linear_cka,
    unbiased_hsic_gram,
    unbiased_linear_cka,
)
from awmtrace.errors import NumericalError


def reference_ucka(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012) eq. (5) on full float64 Grams, straight from the formula."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return unbiased_hsic_gram(k, l) / np.sqrt(unbiased_hsic_gram(k, k) * unbiased_hsic_gram(l, l))


def test_kornblith_published_demo_values() -> None:
    # Kornblith et al.'s CKA demo notebook: linear CKA 0.55761, debiased 0.51346.
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert unbiased_linear_cka(x, y, "gram") == pytest.approx(0.51346, abs=5e-6)
    assert unbiased_linear_cka(x, y, "feature") == pytest.approx(0.51346, abs=5e-6)
    assert reference_ucka(x, y) == pytest.approx(0.51346, abs=5e-6)


@pytest.mark.parametrize(("n", "p", "q"), [(64, 16, 8), (64, 64, 64), (96, 200, 40), (128, 8, 128)])
def test_gram_and_feature_space_agree_with_float64_reference(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n + p + q)
    x = rng.standard_normal((n, p)).astype(np.float32)
    y = (0.5 * x[:, : min(p, q)].sum(axis=1, keepdims=True) + rng.standard_normal((n, q))).astype(np.float32)
    ref = reference_ucka(x, y)
    gram = unbiased_linear_cka(x, y, "gram")
    feat = unbiased_linear_cka(x, y, "feature")
    assert gram == pytest.approx(ref, abs=2e-6)
    assert feat == pytest.approx(ref, abs=2e-6)
    assert unbiased_linear_cka(x, y) == pytest.approx(ref, abs=2e-6)


def test_self_hsic_terms_agree_between_spaces() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    g, f = gram_terms(x), feature_terms(x)
    assert g.self_hsic == pytest.approx(f.self_hsic, rel=1e-5)
    assert g.total == pytest.approx(f.total, rel=1e-5)
    np.testing.assert_allclose(g.row_sums, f.row_sums, rtol=1e-4, atol=1e-3)
    k = x.astype(np.float64) @ x.T.astype(np.float64)
    assert g.self_hsic == pytest.approx(unbiased_hsic_gram(k, k), rel=1e-5)


def test_choose_method_picks_the_cheaper_space() -> None:
    assert cka.choose_method(4096, 1024, 1024) == "feature"  # grouped-query K: n (p+q)^2 < n^2 (p+q)
    assert cka.choose_method(4096, 4096, 4096) == "gram"


def test_symmetric() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    y = (x @ rng.standard_normal((12, 7)) + rng.standard_normal((40, 7))).astype(np.float32)
    assert unbiased_linear_cka(x, y) == pytest.approx(unbiased_linear_cka(y, x), abs=1e-6)


@pytest.fixture
def related_pair() -> tuple[np.ndarray, np.ndarray]:
    """``W_a`` (d_out 48, d_in 64) and a drifted copy, as sample matrices X = W.T."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    w2 = (w + 0.5 * rng.standard_normal(w.shape)).astype(np.float32)
    return w.T, w2.T


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_invariant_to_scaling(related_pair: tuple[np.ndarray, np.ndarray], method: str) -> None:
    x, y = related_pair
    base = unbiased_linear_cka(x, y, method)
    assert unbiased_linear_cka(x * np.float32(7.5), y * np.float32(0.01), method) == pytest.approx(base, abs=1e-5)


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_invariant_to_output_side_orthogonal_transform(related_pair: tuple[np.ndarray, np.ndarray], method: str) -> None:
    # W -> Q W for orthogonal Q (d_out x d_out): the columns of X = W.T rotate.
    x, y = related_pair
    q = ortho_group.rvs(x.shape[1], random_state=6).astype(np.float32)
    assert unbiased_linear_cka(x @ q.T, y, method) == pytest.approx(unbiased_linear_cka(x, y, method), abs=1e-5)


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_invariant_to_row_permutation_of_w(related_pair: tuple[np.ndarray, np.ndarray], method: str) -> None:
    # GGUF's rope reordering permutes the rows of Wq/Wk, i.e. the columns of X.
    x, y = related_pair
    perm = np.random.default_rng(7).permutation(x.shape[1])
    assert unbiased_linear_cka(x[:, perm], y, method) == pytest.approx(unbiased_linear_cka(x, y, method), abs=1e-5)


def test_invariant_to_joint_permutation_of_samples(related_pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = related_pair
    perm = np.random.default_rng(8).permutation(x.shape[0])
    assert unbiased_linear_cka(x[perm], y[perm]) == pytest.approx(unbiased_linear_cka(x, y), abs=1e-5)


def test_not_invariant_to_unmatched_hidden_permutation(related_pair: tuple[np.ndarray, np.ndarray]) -> None:
    # Why alignment is needed: permuting one model's hidden dims alone destroys the score.
    x, y = related_pair
    perm = np.random.default_rng(9).permutation(x.shape[0])
    assert unbiased_linear_cka(x, y) > 0.5
    assert abs(unbiased_linear_cka(x, y[perm])) < 0.2


def test_identical_is_one_and_independent_is_near_zero() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((512, 128)).astype(np.float32)
    assert unbiased_linear_cka(x, x.copy()) == pytest.approx(1.0, abs=1e-6)
    scores = [unbiased_linear_cka(x, rng.standard_normal((512, 128)).astype(np.float32)) for _ in range(5)]
    # Unbiased: independent matrices centre on 0 (the biased CKA would sit near p/n = 0.25 here).
    assert abs(float(np.mean(scores))) < 0.01
    assert max(abs(s) for s in scores) < 0.02


def test_too_few_samples_and_degenerate_input_raise() -> None:
    with pytest.raises(NumericalError, match="at least 4 samples"):
        unbiased_linear_cka(np.ones((3, 2), np.float32), np.ones((3, 2), np.float32))
    with pytest.raises(NumericalError, match="no variance"):
        unbiased_linear_cka(np.zeros((16, 4), np.float32), np.ones((16, 4), np.float32))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NumericalError):
        unbiased_linear_cka(x, bad)
    with pytest.raises(ValueError, match="same number of samples"):
        unbiased_linear_cka(x, x[:8])
    with pytest.raises(ValueError, match="method"):
        unbiased_linear_cka(x, x, "svd")
