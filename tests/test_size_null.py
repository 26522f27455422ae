"""Honest verdicts for every size: independent tiny pairs are never called related, related ones still are.

A fast subset of ``benchmarks/size_null.py``, through the real pipeline on
written checkpoints. Under the 7B-class default null alone, many of these
independent pairs (hidden 16-64, scores up to ~0.1) would be called related.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from awmtrace import synth
from awmtrace.core import stats
from awmtrace.pipeline import compare, compare_many

SIZES = (16, 32, 64)
MODELS_PER_SIZE = 7  # 21 independent pairs per size, 63 in all


def tiny(hidden: int, seed: int, lowrank: bool = False) -> synth.SynthModel:
    """A 2-layer generated Llama; ``lowrank``: every Q/K reads one rank-2 subspace (heavy-tailed, alike layers)."""
    m = synth.random_llama(hidden=hidden, n_layers=2, n_heads=4, n_kv_heads=2, vocab=300, ffn=8, seed=seed)
    if not lowrank:
        return m
    rng = np.random.default_rng(seed + 500)
    basis = rng.standard_normal((2, hidden)).astype(np.float32)

    def low(w: np.ndarray) -> np.ndarray:
        return (rng.standard_normal((w.shape[0], 2)).astype(np.float32) @ basis + 0.05 * w).astype(np.float32)

    return replace(m, q=[low(w) for w in m.q], k=[low(w) for w in m.k])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[Path]]:
    root = tmp_path_factory.mktemp("size_null")
    return {
        n: [synth.write_hf(tiny(n, 100 * n + s, lowrank=s % 3 == 2), root / f"h{n}-{s}") for s in range(MODELS_PER_SIZE)] for n in SIZES
    }


def test_independent_tiny_pairs_are_never_called_related(tiny_models: dict[int, list[Path]]) -> None:
    pairs = [pair for paths in tiny_models.values() for pair in itertools.combinations(paths, 2)]
    assert len(pairs) >= 50
    results = compare_many(pairs, device="cpu")
    labels = [r.verdict.label for r in results]
    assert "related" not in labels
    held_back = [r for r in results if r.verdict.decided_by == "permutation"]
    # The check did the work: the 7B null alone calls some of these related (as it did before the check existed).
    assert held_back and all(r.z >= stats.Z_RELATED for r in held_back)
    for r in results:
        check = r.verdict.permutation
        assert check is not None and check["n_samples"] == r.a["hidden_size"]
        assert check["z"] == pytest.approx(r.score / check["sd"])


@pytest.mark.parametrize("n", SIZES)
def test_related_tiny_pairs_stay_related(n: int, tmp_path: Path) -> None:
    base = tiny(n, 7)
    relatives = {"copy": synth.permute_hidden(base)[0], "drift": synth.drift(base, 0.3)}
    if n >= 32:  # a 3/4-width copy of 16 dimensions keeps 12: no pair that small can be told from chance
        relatives["pruned"] = synth.prune_width(base)
    pb = synth.write_hf(base, tmp_path / "base")
    for name, m in relatives.items():
        r = compare(pb, synth.write_hf(m, tmp_path / name), device="cpu")
        assert r.verdict.label == "related", (name, r.score, r.verdict.to_dict())
        assert r.verdict.permutation is not None and r.verdict.permutation["passed"]


def test_exact_sd_is_computed_only_where_it_can_change_the_verdict(tmp_path: Path) -> None:
    # hidden 16: a drifted copy scores ~0.95, under the one-matrix bound (z_perm = 9.7 < 10) but far
    # outside the exact permutation distribution of a mean over 4 matrices.
    base = tiny(16, 3)
    pb, pd = synth.write_hf(base, tmp_path / "b"), synth.write_hf(synth.drift(base, 0.3), tmp_path / "d")
    r = compare(pb, pd, device="cpu")
    check = r.verdict.permutation
    assert check is not None and check["sd_kind"] == "exact" and r.verdict.label == "related"
    assert check["sd"] < stats.permutation_sd(16)[0]
    # A copy passes on the bound alone (sqrt(104) > 10): no second read.
    same = compare(pb, synth.write_hf(synth.permute_hidden(base)[0], tmp_path / "c"), device="cpu")
    assert same.verdict.permutation is not None and same.verdict.permutation["sd_kind"] == "bound" and same.verdict.label == "related"


@pytest.mark.parametrize("n", [16, 32])
def test_matrix_takes_the_exact_sd_where_compare_does(n: int, tmp_path: Path) -> None:
    # awm matrix scores from cached Grams; where only the exact permutation sd can pass the check, it computes it
    # from those Grams (a narrower copy's gathered ones included) and reaches compare's verdict.
    from awmtrace.collections.matrix import matrix

    base = tiny(n, 3)
    models = {"base": base, "drift": synth.drift(base, 0.3)}
    if n >= 32:
        models["pruned"] = synth.prune_width(synth.drift(base, 0.3, seed=5))
    paths = [synth.write_hf(m, tmp_path / k) for k, m in models.items()]
    out = matrix(paths, cache_dir=tmp_path / "cache")
    for (i, j), r in out.results.items():
        want = compare(paths[i], paths[j], device="cpu").verdict
        got = r["verdict"]
        assert got["label"] == want.label, (i, j, got, want.to_dict())
        assert want.permutation is not None and got["permutation"]["sd_kind"] == want.permutation["sd_kind"]
        assert got["permutation"]["sd"] == pytest.approx(want.permutation["sd"], rel=1e-3)
    assert any(r["verdict"]["permutation"]["sd_kind"] == "exact" for r in out.results.values())
