"""Norm gains folded before scoring: planted truth on tiny checkpoints of several families.

A copy whose gains were folded into the next linear layers (``W := W diag(g)``,
``g := 1``) or whose per-channel scales moved between norm and weights
(AWQ/SmoothQuant: ``g := g / s``, ``W := W diag(s)``) computes the same
function; scored as ``W diag(g)`` it must score like the original, and with
folding switched off it must not (which proves the fold is what does it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import FormatError, NumericalError
from awmtrace.extract import AlignedReader
from awmtrace.io import open_source
from awmtrace.io.safetensors_dir import SafetensorsSource
from awmtrace.pipeline import align_models, compare, open_model
from awmtrace.types import Alignment

RELATED = 0.99  # a function-preserving copy, folded
UNFOLDED_AT_MOST = 0.8  # the same copy scored as stored (gains ~ exp(N(0, 1)) with outliers)
INDEPENDENT = 0.05


def tiny(seed: int = 0, **kw: Any) -> synth.SynthModel:
    shape = {"hidden": 128, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab": 700, **kw}
    return synth.with_gains(synth.random_llama(seed=seed, **shape), spread=1.0, seed=seed + 100)


@pytest.fixture(scope="module")
def base() -> synth.SynthModel:
    return tiny()


@pytest.fixture(scope="module")
def llama_dirs(base: synth.SynthModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("norms")
    models = {
        "base": base,
        "fold": synth.fold_gains(base),
        "awq": synth.awq_scale(base),
        "independent": tiny(seed=42),
    }
    return {name: synth.write_hf(m, root / name) for name, m in models.items()}


def scores(a: Path, b: Path, **kw: Any) -> tuple[float, float]:
    """(score folded, score with folding off)."""
    on = compare(a, b, device="cpu", **kw)
    off = compare(a, b, device="cpu", fold_norms=False, **kw)
    return on.score, off.score


@pytest.mark.parametrize("kind", ["fold", "awq"])
def test_llama_gqa_gain_fold_and_awq_scaling_score_as_the_original(llama_dirs: dict[str, Path], kind: str) -> None:
    on, off = scores(llama_dirs["base"], llama_dirs[kind])
    assert on >= RELATED
    assert off <= UNFOLDED_AT_MOST  # fails if folding did nothing


def test_result_records_the_fold(llama_dirs: dict[str, Path]) -> None:
    r = compare(llama_dirs["base"], llama_dirs["fold"], device="cpu", weights="q,k,up,gate").to_dict()
    for side in ("a", "b"):
        norms = r[side]["norms"]
        assert norms["kind"] == "rms" and norms["folded"] is True
        assert norms["n_layers_folded"] == 3 and norms["missing_layers"] == []
        assert norms["n_ffn_layers_folded"] == 3
    off = compare(llama_dirs["base"], llama_dirs["fold"], device="cpu", fold_norms=False).to_dict()
    assert off["a"]["norms"]["folded"] is False
    assert any("not folded" in n for n in off["notes"])


def test_ffn_inputs_are_folded_with_the_ffn_norm(llama_dirs: dict[str, Path]) -> None:
    for kind in ("fold", "awq"):
        on = compare(llama_dirs["base"], llama_dirs[kind], device="cpu", weights="q,k,up,gate")
        off = compare(llama_dirs["base"], llama_dirs[kind], device="cpu", weights="q,k,up,gate", fold_norms=False)
        assert on.ffn is not None and off.ffn is not None
        assert on.ffn["score_up"] >= RELATED and on.ffn["score_gate"] >= RELATED
        assert off.ffn["score_up"] <= UNFOLDED_AT_MOST


def test_independent_pair_stays_near_zero_with_folding(llama_dirs: dict[str, Path]) -> None:
    on, off = scores(llama_dirs["base"], llama_dirs["independent"])
    assert abs(on) < INDEPENDENT and abs(off) < INDEPENDENT


def test_invariances_keep_holding_with_gains(base: synth.SynthModel, tmp_path: Path) -> None:
    """Permutation + signs + scale (gains permuted along), per-head orthogonal Q/K outputs, width and depth pruning."""
    perm, _, _ = synth.permute_hidden(synth.fold_gains(base), seed=3, scale=5.0)
    rng = np.random.default_rng(8)
    rot = synth.awq_scale(base)
    hd = base.head_dim
    for i in range(base.n_layers):
        # One orthogonal matrix per KV group applied to the rows of its Q heads and its K head: q.k is unchanged.
        groups = [np.linalg.qr(rng.standard_normal((hd, hd)))[0].astype(np.float32) for _ in range(base.n_kv_heads)]
        per_q = base.n_heads // base.n_kv_heads
        rot.q[i] = np.concatenate([groups[h // per_q].T @ rot.q[i][h * hd : (h + 1) * hd] for h in range(base.n_heads)])
        rot.k[i] = np.concatenate([groups[h].T @ rot.k[i][h * hd : (h + 1) * hd] for h in range(base.n_kv_heads)])
    b = synth.write_hf(base, tmp_path / "base")
    for name, m, floor in (
        ("perm", perm, RELATED),
        ("rot", rot, RELATED),
        ("width", synth.prune_width(synth.fold_gains(base)), 0.7),
        ("depth", synth.prune_depth(synth.awq_scale(base), [0, 2]), RELATED),
    ):
        r = compare(b, synth.write_hf(m, tmp_path / name), device="cpu")
        assert r.score >= floor, name


def test_raw_bf16_path_folds_like_the_fallback(base: synth.SynthModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other, _, _ = synth.permute_hidden(synth.awq_scale(base), seed=5)
    pa = synth.write_hf(base, tmp_path / "a", dtype="bfloat16")
    pb = synth.write_hf(other, tmp_path / "b", dtype="bfloat16")
    with open_model(pa) as a, open_model(pb) as b:
        rng = np.random.default_rng(1)
        signs = np.where(rng.random(128) < 0.5, -1.0, 1.0).astype(np.float32)
        al = Alignment(rng.permutation(128), signs, np.ones(128), "a", 128, 128, 600, "vocab")
        fast = AlignedReader(a, b, al)
        got = []
        for i in range(base.n_layers):
            assert fast._raw_jobs("a", i) is not None  # the raw bf16 path is the one under test
            ga = a.source.read(a.view.layers[i].attn_norm.name)
            gb = b.source.read(b.view.layers[i].attn_norm.name)
            qa, qb = (mdl.source.read(mdl.view.layers[i].q.name) for mdl in (a, b))
            xq = fast.samples("a", i)[0].copy()
            yq = fast.samples("b", i)[0].copy()
            np.testing.assert_array_equal(xq, (qa * ga)[:, al.index].T)
            np.testing.assert_array_equal(yq, (qb * (gb * signs)).T)
            got.append((xq, yq))
        with monkeypatch.context() as m:
            m.setattr(SafetensorsSource, "raw_layout", lambda self, name: None)
            slow = AlignedReader(a, b, al)
            for i, (xq, yq) in enumerate(got):
                np.testing.assert_array_equal(slow.samples("a", i)[0], xq)
                np.testing.assert_array_equal(slow.samples("b", i)[0], yq)


def test_qwen2_with_biases(base: synth.SynthModel, tmp_path: Path) -> None:
    a = synth.write_hf(base, tmp_path / "a", family="qwen2")
    b = synth.write_hf(synth.awq_scale(base, seed=9), tmp_path / "b", family="qwen2")
    with open_source(a) as src:
        assert "model.layers.0.self_attn.q_proj.bias" in src.names()
    on, off = scores(a, b)
    assert on >= RELATED and off <= UNFOLDED_AT_MOST


def test_gemma_hf_one_plus_w_against_gguf_with_the_one_added(base: synth.SynthModel, tmp_path: Path) -> None:
    hf = synth.write_hf(base, tmp_path / "gemma", family="gemma")
    with open_source(hf) as src:  # stored as gain - 1
        np.testing.assert_allclose(src.read("model.layers.0.input_layernorm.weight"), base.attn_norm[0] - 1.0, rtol=1e-6)
    same = synth.write_gguf(base, tmp_path / "same.gguf", arch="gemma")
    folded = synth.write_gguf(synth.fold_gains(base), tmp_path / "folded.gguf", arch="gemma")
    for gguf_path in (same, folded):
        r = compare(hf, gguf_path, device="cpu")
        assert r.b["norm_offset"] == 0.0 and r.a["norm_offset"] == 1.0
        assert r.score >= RELATED, gguf_path.name
    # Folding off: the HF copy keeps its gains outside W, the folded GGUF copy inside; only the fold reconciles them.
    assert compare(hf, folded, device="cpu", fold_norms=False).score <= UNFOLDED_AT_MOST


def write_gpt2(m: synth.SynthModel, folder: Path) -> Path:
    """GPT-2 names: Conv1D c_attn (hidden, 3 * hidden) holding Q, K, V contiguously; LayerNorm ln_1/ln_2 with biases."""
    assert m.n_heads == m.n_kv_heads
    rng = np.random.default_rng(0)
    t: dict[str, np.ndarray] = {"wte.weight": m.embed}
    ga, gf = m.gains("attn"), m.gains("ffn")
    for i in range(m.n_layers):
        t[f"h.{i}.ln_1.weight"], t[f"h.{i}.ln_1.bias"] = ga[i], rng.standard_normal(m.hidden)
        t[f"h.{i}.attn.c_attn.weight"] = np.concatenate([m.q[i], m.k[i], m.v[i]]).T
        t[f"h.{i}.attn.c_proj.weight"] = m.o[i].T
        t[f"h.{i}.ln_2.weight"] = gf[i]
        t[f"h.{i}.mlp.c_fc.weight"] = m.up[i].T
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": m.hidden, "n_head": m.n_heads, "n_layer": m.n_layers}
    return _save(folder, cfg, t, m.tokens)


def write_bert(m: synth.SynthModel, folder: Path) -> Path:
    """BERT (post-LN): block i's attention reads block i-1's output LayerNorm, block 0 the embedding LayerNorm."""
    assert m.n_heads == m.n_kv_heads
    ga, gf = m.gains("attn"), m.gains("ffn")
    t: dict[str, np.ndarray] = {"embeddings.word_embeddings.weight": m.embed, "embeddings.LayerNorm.weight": ga[0]}
    for i in range(m.n_layers):
        p = f"encoder.layer.{i}."
        t[p + "attention.self.query.weight"], t[p + "attention.self.key.weight"] = m.q[i], m.k[i]
        t[p + "attention.self.value.weight"] = m.v[i]
        t[p + "attention.output.LayerNorm.weight"] = gf[i]
        t[p + "intermediate.dense.weight"] = m.up[i]
        t[p + "output.LayerNorm.weight"] = ga[i + 1] if i + 1 < m.n_layers else np.ones(m.hidden, dtype=np.float32)
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": m.hidden, "num_attention_heads": m.n_heads}
    return _save(folder, {**cfg, "num_hidden_layers": m.n_layers}, t, m.tokens)


def _save(folder: Path, cfg: dict[str, Any], tensors: dict[str, np.ndarray], tokens: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    synth.write_tokenizer_json(tokens, folder / "tokenizer.json")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("writer", [write_gpt2, write_bert], ids=["gpt2-fused-qkv", "bert-post-ln"])
def test_layernorm_families(writer: Any, tmp_path: Path) -> None:
    m = tiny(seed=3, n_kv_heads=4)
    a = writer(m, tmp_path / "a")
    with open_model(a) as model:
        assert model.view.norm_kind == "layer"
    for kind, other in (("fold", synth.fold_gains(m)), ("awq", synth.awq_scale(m))):
        on, off = scores(a, writer(other, tmp_path / kind))
        assert on >= RELATED, kind
        assert off <= UNFOLDED_AT_MOST, kind
    independent = writer(tiny(seed=77, n_kv_heads=4), tmp_path / "independent")
    assert abs(compare(a, independent, device="cpu").score) < INDEPENDENT


def drop_tensors(folder: Path, pred: Any) -> None:
    path = folder / "model.safetensors"
    kept = {k: v for k, v in load_file(str(path)).items() if not pred(k)}
    save_file(kept, str(path))


def test_missing_norm_tensors_are_reported_and_scored_unfolded(base: synth.SynthModel, tmp_path: Path) -> None:
    # An export that folded its gains and dropped the (now all-ones) norm weights still matches the original.
    a = synth.write_hf(base, tmp_path / "a")
    b = synth.write_hf(synth.fold_gains(base), tmp_path / "b")
    drop_tensors(b, lambda k: "layernorm" in k)
    r = compare(a, b, device="cpu", weights="q,k,up").to_dict()
    assert r["score"] >= RELATED
    assert r["b"]["norms"]["missing_layers"] == [0, 1, 2] and r["b"]["norms"]["n_layers_folded"] == 0
    assert r["a"]["norms"]["missing_layers"] == []
    assert any(n.startswith("B: no rms norm weight found for 3 of 3 layer(s)") for n in r["notes"])
    assert any("no attention norm tensor was found" in n for n in r["b"]["notes"])


def write_with_norm(base: synth.SynthModel, folder: Path, value: np.ndarray, family: str = "llama") -> Path:
    path = synth.write_hf(base, folder, family=family)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["model.layers.1.input_layernorm.weight"] = value.astype(np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.ones((2, 64)), FormatError, r"input_layernorm\.weight' has shape \(2, 64\), expected \(128,\)"),
        (np.where(np.arange(128) == 5, np.nan, 1.0), NumericalError, r"input_layernorm\.weight'.*1 NaN/Inf"),
        (np.where(np.arange(128) < 2, np.inf, 1.0), NumericalError, r"input_layernorm\.weight'.*2 NaN/Inf"),
        (np.zeros(128), NumericalError, r"input_layernorm\.weight'.*every gain is 0"),
    ],
    ids=["shape", "nan", "inf", "all-zero"],
)
def test_bad_norms_are_one_clear_error(base: synth.SynthModel, tmp_path: Path, value: np.ndarray, error: type, message: str) -> None:
    good = synth.write_hf(base, tmp_path / "good")
    bad = write_with_norm(base, tmp_path / "bad", value)
    with pytest.raises(error, match=message):
        compare(good, bad, device="cpu")
    assert compare(good, bad, device="cpu", fold_norms=False).score >= RELATED  # the escape hatch
    r = CliRunner().invoke(main, ["compare", str(good), str(bad), "-q"])
    assert r.exit_code == 3  # bad input
    assert "model.layers.1.input_layernorm.weight" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in bad.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert CliRunner().invoke(main, ["compare", str(good), str(bad), "-q", "--no-fold-norms"]).exit_code == 0


def test_gemma_weight_of_minus_one_is_a_zero_gain(base: synth.SynthModel, tmp_path: Path) -> None:
    good = synth.write_hf(base, tmp_path / "good", family="gemma")
    bad = write_with_norm(base, tmp_path / "bad", -np.ones(128), family="gemma")
    with pytest.raises(NumericalError, match=r"every gain is 0 \(stored as -1"):
        compare(good, bad, device="cpu")


def test_some_zero_gains_are_folded_and_noted(base: synth.SynthModel, tmp_path: Path) -> None:
    g = base.attn_norm[1].copy()
    g[:3] = 0.0
    good = synth.write_hf(base, tmp_path / "good")
    zeroed = write_with_norm(base, tmp_path / "zeroed", g)
    r = compare(good, zeroed, device="cpu")
    assert r.b["norms"]["zero_gain_entries"] == {"model.layers.1.input_layernorm.weight": 3}
    assert any("3 zero gain(s)" in n for n in r.notes)
    assert r.score >= 0.95  # three switched-off dimensions of 128 in one layer of three


def test_inspect_shows_the_norm_of_every_layer(llama_dirs: dict[str, Path]) -> None:
    r = CliRunner().invoke(main, ["inspect", str(llama_dirs["base"]), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["norm_kind"] == "rms" and data["norm_offset"] == 0.0
    layer = data["tensors"]["layers"][2]
    assert layer["attn_norm"]["name"] == "model.layers.2.input_layernorm.weight"
    assert layer["ffn_norm"]["name"] == "model.layers.2.post_attention_layernorm.weight"
    r = CliRunner().invoke(main, ["inspect", str(llama_dirs["base"])], env={"COLUMNS": "200"})
    assert "model.layers.0.input_layernorm.weight" in r.output
    assert "blk.2.ffn_norm" in r.output and "model.layers.2.post_attention_layernorm.weight" in r.output


def test_alignment_is_untouched_by_gains(llama_dirs: dict[str, Path]) -> None:
    # Folding changes what is scored, never how hidden dimensions are matched.
    with open_model(llama_dirs["base"]) as a, open_model(llama_dirs["awq"]) as b:
        al = align_models(a, b)
    assert al.is_identity


def test_llama_gguf_copy_of_an_awq_scaled_model_q8(base: synth.SynthModel, tmp_path: Path) -> None:
    """GGUF reads (rope-permuted Q/K rows, Q8_0 weights, F32 norms) fold too, FFN inputs included."""
    hf = synth.write_hf(base, tmp_path / "hf")
    gguf_path = synth.write_gguf(synth.awq_scale(base, seed=11), tmp_path / "awq.gguf", qtype="Q8_0")
    on = compare(hf, gguf_path, device="cpu", weights="q,k,up,gate")
    off = compare(hf, gguf_path, device="cpu", weights="q,k,up,gate", fold_norms=False)
    assert on.score >= 0.98 and on.ffn is not None and on.ffn["score_up"] >= 0.98
    assert off.score <= UNFOLDED_AT_MOST
    assert on.b["norms"]["n_layers_folded"] == 3 and on.b["norms"]["n_ffn_layers_folded"] == 3
