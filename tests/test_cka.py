"""The estimator against oracles: published values, a float64 reference, invariances."""

from __future__ import annotations

from pathlib import Path

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


def _perm_scores(xs: list[np.ndarray], ys: list[np.ndarray], perms: np.ndarray) -> np.ndarray:
    """UCKA of each (x, y) pair for every permutation (rows of ``perms``) of y's samples: ``(n_perms, n_pairs)``."""
    grams_y = [y.astype(np.float64) @ y.T.astype(np.float64) for y in ys]
    grams_x = [x.astype(np.float64) @ x.T.astype(np.float64) for x in xs]
    out = np.empty((len(perms), len(xs)))
    for r, p in enumerate(perms):
        for c, (k, l) in enumerate(zip(grams_x, grams_y, strict=True)):  # noqa: E741
            lp = l[np.ix_(p, p)]
            out[r, c] = unbiased_hsic_gram(k, lp) / np.sqrt(unbiased_hsic_gram(k, k) * unbiased_hsic_gram(l, l))
    return out


def _matrices(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, 5))
    if kind == "lowrank":  # rank 1: the most heavy-tailed permutation distribution
        return np.outer(rng.standard_normal(n), rng.standard_normal(3))
    return rng.standard_t(2, size=(n, 4)) * np.exp(rng.standard_normal(n))[:, None]  # outliers


@pytest.mark.parametrize("kind", ["gaussian", "lowrank", "outliers"])
def test_permutation_moments_are_exact_over_all_permutations(kind: str) -> None:
    # All 7! = 5040 permutations: mean 0 and variance 2 / (n (n - 3)), whatever the matrices.
    import itertools

    rng = np.random.default_rng(3)
    n = 7
    x, y = _matrices(kind, n, rng), _matrices("gaussian", n, rng)
    scores = _perm_scores([x], [y], np.array(list(itertools.permutations(range(n)))))[:, 0]
    assert scores.mean() == pytest.approx(0.0, abs=1e-12)
    assert scores.var() == pytest.approx(cka.permutation_variance(n), rel=1e-10)
    assert cka.permutation_variance(n) == pytest.approx(2.0 / 28.0)


def test_permutation_covariance_across_layers_is_exact_over_all_permutations() -> None:
    # Two layers scored under one common permutation: Cov = 2/(n(n-3)) * UCKA(x1, x2) * UCKA(y1, y2).
    import itertools

    rng = np.random.default_rng(4)
    n = 7
    x1 = rng.standard_normal((n, 4))
    x2 = x1 + 0.5 * rng.standard_normal((n, 4))
    y1 = rng.standard_normal((n, 3))
    y2 = y1 @ rng.standard_normal((3, 3)) + 0.3 * rng.standard_normal((n, 3))
    s = _perm_scores([x1, x2], [y1, y2], np.array(list(itertools.permutations(range(n)))))
    cov = np.cov(s.T, bias=True)[0, 1]
    expect = cka.permutation_variance(n) * reference_ucka(x1, x2) * reference_ucka(y1, y2)
    assert cov == pytest.approx(expect, rel=1e-9)
    sim_x = cka.similarity_matrix([x1.astype(np.float32), x2.astype(np.float32)])
    assert sim_x[0, 1] == pytest.approx(reference_ucka(x1, x2), abs=1e-5) and sim_x[0, 0] == 1.0


@pytest.mark.parametrize("kind", ["gaussian", "lowrank", "outliers"])
def test_permutation_moments_match_monte_carlo(kind: str) -> None:
    # n = 40, 4000 random permutations: the simulated mean and sd sit within sampling error of the exact ones,
    # and the mean of three correlated layers has the exact sd stats.permutation_sd gives.
    from awmtrace.core import stats

    rng = np.random.default_rng(5)
    n, draws = 40, 4000
    base_x, base_y = _matrices(kind, n, rng), _matrices("gaussian", n, rng)
    xs = [base_x + 0.3 * i * rng.standard_normal(base_x.shape) for i in range(3)]
    ys = [base_y + 0.5 * rng.standard_normal(base_y.shape) for _ in range(3)]
    s = _perm_scores(xs, ys, np.array([rng.permutation(n) for _ in range(draws)]))
    sd1 = np.sqrt(cka.permutation_variance(n))
    assert abs(s[:, 0].mean()) < 4 * sd1 / np.sqrt(draws)
    # sd of a sample sd ~ sd * sqrt((kurtosis - 1) / (4 draws)); kurtosis here stays below 20.
    assert s[:, 0].std() == pytest.approx(sd1, rel=4 * np.sqrt(19 / (4 * draws)))
    sims = [cka.similarity_matrix([m.astype(np.float32) for m in ms]) for ms in (xs, ys)]
    sd_mean, kind_sd = stats.permutation_sd(n, sims[0], sims[1])
    assert kind_sd == "exact" and sd_mean < sd1
    assert s.mean(axis=1).std() == pytest.approx(sd_mean, rel=4 * np.sqrt(19 / (4 * draws)))
    assert stats.permutation_sd(n) == (pytest.approx(sd1), "bound")


def test_cantelli_bound_holds_for_the_heaviest_tail() -> None:
    # Rank-1 Grams make the permutation distribution as skewed as it gets; the share beyond z stays under 1 / (1 + z^2).
    rng = np.random.default_rng(6)
    n = 30
    x, y = _matrices("lowrank", n, rng), _matrices("lowrank", n, rng)
    s = _perm_scores([x], [y], np.array([rng.permutation(n) for _ in range(20000)]))[:, 0]
    z = s / np.sqrt(cka.permutation_variance(n))
    for t in (2.0, 3.0, 5.0):
        assert np.mean(z >= t) <= 1.0 / (1.0 + t * t)


@pytest.mark.parametrize("factor", [1e25, 1e-25, 1e15])
@pytest.mark.parametrize("method", ["gram", "feature"])
def test_values_that_overflow_float32_products_give_the_right_score(factor: float, method: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    y = (x @ rng.standard_normal((48, 40)) + rng.standard_normal((64, 40))).astype(np.float32)
    expect = unbiased_linear_cka(x, y, method)
    big = (x.astype(np.float64) * factor).astype(np.float32)
    assert np.isfinite(big).all()
    assert unbiased_linear_cka(big, y, method) == pytest.approx(expect, abs=1e-5)
    assert unbiased_linear_cka(big, big, method) == pytest.approx(1.0, abs=1e-5)
    ws = cka.GramWorkspace()
    assert unbiased_linear_cka(y, big, "gram", workspace=ws) == pytest.approx(expect, abs=1e-5)


def test_non_finite_terms_say_so_rather_than_no_variance() -> None:
    for bad in (float("inf"), float("nan")):
        with pytest.raises(NumericalError, match="NaN or Inf values, or values so large"):
            cka.cka_from_terms(1.0, bad, 1.0)
    with pytest.raises(NumericalError, match="no variance"):
        cka.cka_from_terms(1.0, 0.0, 1.0)


def test_one_hsic_formula() -> None:
    # Backends share cka.hsic_from_sums; it is Song et al.'s eq. (5).
    from awmtrace.core.backend import TorchBackend

    assert TorchBackend._hsic is cka.hsic_from_sums
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 5))
    k, l = x @ x.T, y @ y.T  # noqa: E741
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    sums = (np.sum(k * l), k.sum(), l.sum(), k.sum(1) @ l.sum(1))
    assert cka.hsic_from_sums(*sums, 12) == pytest.approx(unbiased_hsic_gram(x @ x.T, y @ y.T))


def test_torch_backend_rescales_too() -> None:
    pytest.importorskip("torch")
    from awmtrace.core.backend import select_backend

    tb, _ = select_backend("torch-cpu")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    y = (x @ rng.standard_normal((48, 40)) + rng.standard_normal((64, 40))).astype(np.float32)
    big = (x.astype(np.float64) * 1e25).astype(np.float32)
    expect = unbiased_linear_cka(x, y)
    assert tb.ucka(big, y) == pytest.approx(expect, abs=1e-5)  # Gram space
    assert tb.ucka(big[:, :8], y[:, :8]) == pytest.approx(unbiased_linear_cka(x[:, :8], y[:, :8]), abs=1e-5)  # feature space
    assert tb.cka_from_gram_terms(tb.gram_terms(big), tb.gram_terms(y)) == pytest.approx(expect, abs=1e-5)


def test_pipeline_scores_a_checkpoint_whose_wq_is_scaled_by_1e25(tmp_path: Path) -> None:
    from dataclasses import replace

    from awmtrace import synth
    from awmtrace.pipeline import compare

    base = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=300, ffn=8, seed=1)
    huge = replace(base, q=[w * np.float32(1e25) for w in base.q], k=[w * np.float32(1e-25) for w in base.k])
    assert all(np.isfinite(w).all() for w in huge.q)
    r = compare(synth.write_hf(base, tmp_path / "base"), synth.write_hf(huge, tmp_path / "huge"), device="cpu")
    assert r.score_q == pytest.approx(1.0, abs=1e-5) and r.score_k == pytest.approx(1.0, abs=1e-5)
    assert r.verdict.label == "related"
