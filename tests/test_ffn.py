"""FFN input projections (--weights up,gate): same alignment and estimator, MoE experts matched, reported apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from awmtrace import synth
from awmtrace.pipeline import compare

N_EXPERTS = 4
UPCYCLED = 2  # the expert that keeps the dense FFN (others are re-initialised)


def write_mixtral(dense: synth.SynthModel, folder: Path, seed: int) -> Path:
    """A Mixtral checkpoint upcycled from ``dense``: attention copied, expert ``UPCYCLED`` = the dense FFN plus noise."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": dense.embed, "model.norm.weight": np.ones(dense.hidden, np.float32)}
    for i in range(dense.n_layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = dense.q[i]
        tensors[p + "self_attn.k_proj.weight"] = dense.k[i]
        tensors[p + "self_attn.v_proj.weight"] = dense.v[i]
        tensors[p + "self_attn.o_proj.weight"] = dense.o[i]
        tensors[p + "block_sparse_moe.gate.weight"] = rng.standard_normal((N_EXPERTS, dense.hidden)).astype(np.float32)
        for e in range(N_EXPERTS):
            x = p + f"block_sparse_moe.experts.{e}."
            scale = float(np.std(dense.up[i]))
            if e == UPCYCLED:  # the dense FFN plus noise at 10% of its scale
                gate = dense.gate[i] + 0.1 * scale * rng.standard_normal(dense.gate[i].shape)
                up = dense.up[i] + 0.1 * scale * rng.standard_normal(dense.up[i].shape)
            else:
                gate = scale * rng.standard_normal(dense.gate[i].shape)
                up = scale * rng.standard_normal(dense.up[i].shape)
            tensors[x + "w1.weight"] = gate.astype(np.float32)
            tensors[x + "w3.weight"] = up.astype(np.float32)
            tensors[x + "w2.weight"] = dense.down[i]
    folder.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config = dense.config() | {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "num_local_experts": N_EXPERTS,
        "num_experts_per_tok": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    synth.write_tokenizer_json(dense.tokens, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    dense = synth.random_llama(hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab=1024, seed=30)
    moved, _, _ = synth.permute_hidden(dense, seed=31)
    return {
        "dense": synth.write_hf(dense, root / "dense"),
        "moe": write_mixtral(moved, root / "moe", seed=32),
        "stranger": synth.write_hf(
            synth.random_llama(hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab=1024, seed=33), root / "stranger"
        ),
    }


def test_upcycled_moe_experts_are_matched_to_the_dense_ffn(moe: dict[str, Path]) -> None:
    r = compare(moe["dense"], moe["moe"], weights="q,k,up,gate", device="cpu")
    assert r.score == pytest.approx(1.0, abs=1e-4)  # attention copied (through a hidden permutation)
    ffn = r.ffn
    assert ffn is not None and ffn["weights"] == ["up", "gate"]
    assert ffn["score_up"] > 0.9 and ffn["score_gate"] > 0.9
    assert len(ffn["layers"]) == 4
    for row in ffn["layers"]:
        assert row["expert_a"] is None  # dense side
        assert row["expert_b"] == UPCYCLED


def test_moe_against_itself_pairs_each_layer_with_the_same_expert(moe: dict[str, Path]) -> None:
    r = compare(moe["moe"], moe["moe"], weights="q,k,gate", device="cpu")
    assert r.ffn is not None
    for row in r.ffn["layers"]:
        assert row["score"] == pytest.approx(1.0, abs=1e-5)
        assert row["expert_a"] == row["expert_b"]


def test_ffn_scores_never_enter_the_attention_score(moe: dict[str, Path]) -> None:
    with_ffn = compare(moe["stranger"], moe["moe"], weights="q,k,up,gate", device="cpu")
    without = compare(moe["stranger"], moe["moe"], device="cpu")
    assert with_ffn.score == pytest.approx(without.score)
    assert without.ffn is None
    assert abs(with_ffn.ffn["score_up"]) < 0.1  # best of 4 experts against a stranger: still low
