"""Every architecture family of ``architectures.toml`` resolves, proven on tiny checkpoints with real names.

``EXPECTED`` states, independently of the table, which tensors of each
example are the embedding, Q, K (or the fused QKV and its layout) and the FFN
inputs, and the head counts; the names were checked against the upstream
modeling code and llama.cpp's converter cited in each table entry. The
fixture writer packs fused tensors with its own code (not arch/qkv.py), so a
wrong layout in the table or a wrong cut in the resolver fails the exact
comparison of planted and read matrices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import MODEL_ARCH, TensorNameMap
from safetensors.numpy import save_file

from awmtrace.arch import names as arch_names
from awmtrace.arch.names import canonical_role, gguf_arch, gguf_role
from awmtrace.arch.resolve import load_table, read_attention, read_ffn, read_norm, resolve
from awmtrace.errors import MissingTensor, UnsupportedArchitecture
from awmtrace.io import open_source

HIDDEN = 64
N_LAYERS = 2
D_FF = 16


def sep(prefix: str, q: str, k: str, **kw: Any) -> dict[str, Any]:
    return {"q": prefix + q, "k": prefix + k, **kw}


def norms(attn: str | None, ffn: str | None, kind: str = "layer", offset: float = 0.0, first: str | None = None) -> dict[str, Any]:
    """What feeds attention and the FFN: templates (``{bid}``; ``{prev}`` = the previous block, ``first`` for block 0)."""
    return {"attn": attn, "ffn": ffn, "kind": kind, "offset": offset, "first": first}


def llama_like(prefix: str, family: str, embedding: str, nh: int, nkv: int, hd: int, **kw: Any) -> dict[str, Any]:
    base = {
        "family": family,
        "embedding": embedding,
        "q": f"{prefix}layers.{{bid}}.self_attn.q_proj.weight",
        "k": f"{prefix}layers.{{bid}}.self_attn.k_proj.weight",
        "heads": (nh, nkv, hd),
        "up": [f"{prefix}layers.{{bid}}.mlp.up_proj.weight"],
        "gate": [f"{prefix}layers.{{bid}}.mlp.gate_proj.weight"],
        "norms": norms(f"{prefix}layers.{{bid}}.input_layernorm.weight", f"{prefix}layers.{{bid}}.post_attention_layernorm.weight", "rms"),
    }
    base.update(kw)
    return base


def gemma2_norms(prefix: str) -> dict[str, Any]:
    # Gemma 2/3: post_attention_layernorm normalises the attention output; pre_feedforward_layernorm feeds the MLP.
    return norms(f"{prefix}layers.{{bid}}.input_layernorm.weight", f"{prefix}layers.{{bid}}.pre_feedforward_layernorm.weight", "rms", 1.0)


# example id -> what its tensors are. "heads" = (n_heads, n_kv_heads, head_dim).
EXPECTED: dict[str, dict[str, Any]] = {
    "llama": llama_like("model.", "llama", "model.embed_tokens.weight", 4, 2, 16),
    "llava-1.5-hf (transformers < 4.52 names)": llama_like(
        "language_model.model.", "llama", "language_model.model.embed_tokens.weight", 4, 4, 16
    ),
    "llava-1.5-hf (transformers >= 4.52 names)": llama_like(
        "model.language_model.", "llama", "model.language_model.embed_tokens.weight", 4, 4, 16
    ),
    "video-llava-7b-hf": llama_like("language_model.model.", "llama", "language_model.model.embed_tokens.weight", 4, 4, 16),
    "llava-v1.5 (original LLaVA code)": llama_like("model.", "llama", "model.embed_tokens.weight", 4, 4, 16),
    "llama-moe-v1": llama_like(
        "model.",
        "llama_moe",
        "model.embed_tokens.weight",
        4,
        4,
        16,
        up=["model.layers.{bid}.mlp.calculator.experts.weight_up.{xid}"],
        gate=["model.layers.{bid}.mlp.calculator.experts.weight_gate.{xid}"],
    ),
    "qwen2-audio": llama_like("language_model.model.", "qwen2", "language_model.model.embed_tokens.weight", 4, 4, 16),
    "qwen-vl": {
        "family": "qwen",
        "embedding": "transformer.wte.weight",
        "qkv": ("transformer.h.{bid}.attn.c_attn.weight", "contiguous", False),
        "heads": (4, 4, 16),
        "up": ["transformer.h.{bid}.mlp.w1.weight"],
        "gate": ["transformer.h.{bid}.mlp.w2.weight"],
        "norms": norms("transformer.h.{bid}.ln_1.weight", "transformer.h.{bid}.ln_2.weight", "rms"),
    },
    "mistral": llama_like("model.", "mistral", "model.embed_tokens.weight", 4, 1, 16),
    "mixtral": llama_like(
        "model.",
        "mixtral",
        "model.embed_tokens.weight",
        4,
        2,
        16,
        up=["model.layers.{bid}.block_sparse_moe.experts.{xid}.w3.weight"],
        gate=["model.layers.{bid}.block_sparse_moe.experts.{xid}.w1.weight"],
    ),
    "internlm-7b": llama_like("model.", "internlm", "model.embed_tokens.weight", 4, 4, 16),
    "minicpm-2b": llama_like("model.", "minicpm", "model.embed_tokens.weight", 4, 4, 16),
    "plamo-13b": llama_like(
        "model.layers.",
        "plamo",
        "model.embed_tokens.weight",
        4,
        2,
        16,
        norms=norms("model.layers.layers.{bid}.norm.weight", "model.layers.layers.{bid}.norm.weight", "rms"),  # parallel block
    ),
    "qwen-7b": {
        "family": "qwen",
        "embedding": "transformer.wte.weight",
        "qkv": ("transformer.h.{bid}.attn.c_attn.weight", "contiguous", False),
        "heads": (4, 4, 16),
        "up": ["transformer.h.{bid}.mlp.w1.weight"],
        "gate": ["transformer.h.{bid}.mlp.w2.weight"],
        "norms": norms("transformer.h.{bid}.ln_1.weight", "transformer.h.{bid}.ln_2.weight", "rms"),
    },
    "qwen2.5 (tied embeddings)": llama_like("model.", "qwen2", "model.embed_tokens.weight", 4, 2, 16),
    "qwen3": llama_like("model.", "qwen3", "model.embed_tokens.weight", 4, 2, 32),
    "qwen1.5-moe": llama_like(
        "model.",
        "qwen2_moe",
        "model.embed_tokens.weight",
        4,
        4,
        16,
        up=[
            "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight",
            "model.layers.{bid}.mlp.shared_expert.up_proj.weight",
        ],
        gate=[
            "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight",
            "model.layers.{bid}.mlp.shared_expert.gate_proj.weight",
        ],
    ),
    "qwen3-moe": llama_like(
        "model.",
        "qwen3_moe",
        "model.embed_tokens.weight",
        4,
        2,
        16,
        up=["model.layers.{bid}.mlp.experts.{xid}.up_proj.weight"],
        gate=["model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight"],
    ),
    "qwen2.5-vl (hub names)": llama_like("model.", "qwen2_vl", "model.embed_tokens.weight", 4, 2, 16),
    "qwen2-vl (model.language_model names, nested text_config)": llama_like(
        "model.language_model.", "qwen2_vl", "model.language_model.embed_tokens.weight", 4, 2, 16
    ),
    "gemma-2b (multi-query, tied)": llama_like(
        "model.",
        "gemma",
        "model.embed_tokens.weight",
        4,
        1,
        32,
        norms=norms("model.layers.{bid}.input_layernorm.weight", "model.layers.{bid}.post_attention_layernorm.weight", "rms", 1.0),
    ),
    "gemma-2": llama_like("model.", "gemma2", "model.embed_tokens.weight", 4, 2, 16, norms=gemma2_norms("model.")),
    "gemma-3-1b (text only)": llama_like("model.", "gemma3", "model.embed_tokens.weight", 4, 1, 32, norms=gemma2_norms("model.")),
    "gemma-3-4b (transformers < 4.52 names)": llama_like(
        "language_model.model.",
        "gemma3",
        "language_model.model.embed_tokens.weight",
        4,
        2,
        32,
        norms=gemma2_norms("language_model.model."),
    ),
    "gemma-3-4b (transformers >= 4.52 names)": llama_like(
        "model.language_model.",
        "gemma3",
        "model.language_model.embed_tokens.weight",
        4,
        2,
        32,
        norms=gemma2_norms("model.language_model."),
    ),
    "phi-3": {
        "family": "phi3",
        "embedding": "model.embed_tokens.weight",
        "qkv": ("model.layers.{bid}.self_attn.qkv_proj.weight", "contiguous", False),
        "heads": (4, 2, 16),
        "gate_up": ("model.layers.{bid}.mlp.gate_up_proj.weight", "gate_up"),
        "norms": norms("model.layers.{bid}.input_layernorm.weight", "model.layers.{bid}.post_attention_layernorm.weight", "rms"),
    },
    "chatglm3-6b": {
        "family": "chatglm",
        "embedding": "transformer.embedding.word_embeddings.weight",
        "qkv": ("transformer.encoder.layers.{bid}.self_attention.query_key_value.weight", "contiguous", False),
        "heads": (4, 2, 16),
        "gate_up": ("transformer.encoder.layers.{bid}.mlp.dense_h_to_4h.weight", "gate_up"),
        "norms": norms(
            "transformer.encoder.layers.{bid}.input_layernorm.weight",
            "transformer.encoder.layers.{bid}.post_attention_layernorm.weight",
            "rms",
        ),
    },
    "chatglm-6b": {
        "family": "chatglm_v1",
        "embedding": "transformer.word_embeddings.weight",
        "qkv": ("transformer.layers.{bid}.attention.query_key_value.weight", "per_head", False),
        "heads": (4, 4, 16),
        "up": ["transformer.layers.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("transformer.layers.{bid}.input_layernorm.weight", "transformer.layers.{bid}.post_attention_layernorm.weight"),
    },
    "baichuan2-7b": {
        "family": "baichuan",
        "embedding": "model.embed_tokens.weight",
        "qkv": ("model.layers.{bid}.self_attn.W_pack.weight", "contiguous", False),
        "heads": (4, 4, 16),
        "up": ["model.layers.{bid}.mlp.up_proj.weight"],
        "gate": ["model.layers.{bid}.mlp.gate_proj.weight"],
        "norms": norms("model.layers.{bid}.input_layernorm.weight", "model.layers.{bid}.post_attention_layernorm.weight", "rms"),
    },
    "internlm2": {
        "family": "internlm2",
        "embedding": "model.tok_embeddings.weight",
        "qkv": ("model.layers.{bid}.attention.wqkv.weight", "kv_group", False),
        "heads": (4, 2, 16),
        "up": ["model.layers.{bid}.feed_forward.w3.weight"],
        "gate": ["model.layers.{bid}.feed_forward.w1.weight"],
        "norms": norms("model.layers.{bid}.attention_norm.weight", "model.layers.{bid}.ffn_norm.weight", "rms"),
    },
    "falcon-40b (new decoder architecture)": {
        "family": "falcon",
        "embedding": "transformer.word_embeddings.weight",
        "qkv": ("transformer.h.{bid}.self_attention.query_key_value.weight", "kv_group", False),
        "heads": (4, 2, 16),
        "up": ["transformer.h.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("transformer.h.{bid}.ln_attn.weight", "transformer.h.{bid}.ln_mlp.weight"),
    },
    "falcon-7b (multi-query)": {
        "family": "falcon",
        "embedding": "transformer.word_embeddings.weight",
        "qkv": ("transformer.h.{bid}.self_attention.query_key_value.weight", "kv_group", False),
        "heads": (4, 1, 16),
        "up": ["transformer.h.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("transformer.h.{bid}.input_layernorm.weight", "transformer.h.{bid}.input_layernorm.weight"),
    },
    "falcon-rw-1b (per-head)": {
        "family": "falcon",
        "embedding": "transformer.word_embeddings.weight",
        "qkv": ("transformer.h.{bid}.self_attention.query_key_value.weight", "per_head", False),
        "heads": (4, 4, 16),
        "up": ["transformer.h.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("transformer.h.{bid}.input_layernorm.weight", "transformer.h.{bid}.post_attention_layernorm.weight"),
    },
    "pythia": {
        "family": "gpt_neox",
        "embedding": "gpt_neox.embed_in.weight",
        "qkv": ("gpt_neox.layers.{bid}.attention.query_key_value.weight", "per_head", False),
        "heads": (4, 4, 16),
        "up": ["gpt_neox.layers.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("gpt_neox.layers.{bid}.input_layernorm.weight", "gpt_neox.layers.{bid}.post_attention_layernorm.weight"),
    },
    "bloom-560m": {
        "family": "bloom",
        "embedding": "word_embeddings.weight",
        "qkv": ("h.{bid}.self_attention.query_key_value.weight", "per_head", False),
        "heads": (4, 4, 16),
        "up": ["h.{bid}.mlp.dense_h_to_4h.weight"],
        "norms": norms("h.{bid}.input_layernorm.weight", "h.{bid}.post_attention_layernorm.weight"),
    },
    "gpt2 (openai-community names)": {
        "family": "gpt2",
        "embedding": "wte.weight",
        "qkv": ("h.{bid}.attn.c_attn.weight", "contiguous", True),
        "heads": (4, 4, 16),
        "up": ["h.{bid}.mlp.c_fc.weight"],
        "ffn_transposed": True,
        "norms": norms("h.{bid}.ln_1.weight", "h.{bid}.ln_2.weight"),
    },
    "gpt2 (GPT2LMHeadModel save)": {
        "family": "gpt2",
        "embedding": "transformer.wte.weight",
        "qkv": ("transformer.h.{bid}.attn.c_attn.weight", "contiguous", True),
        "heads": (4, 4, 16),
        "up": ["transformer.h.{bid}.mlp.c_fc.weight"],
        "ffn_transposed": True,
        "norms": norms("transformer.h.{bid}.ln_1.weight", "transformer.h.{bid}.ln_2.weight"),
    },
    "jais-13b": {
        "family": "jais",
        "embedding": "transformer.wte.weight",
        "qkv": ("transformer.h.{bid}.attn.c_attn.weight", "contiguous", True),
        "heads": (4, 4, 16),
        "up": ["transformer.h.{bid}.mlp.c_fc.weight"],
        "gate": ["transformer.h.{bid}.mlp.c_fc2.weight"],
        "ffn_transposed": True,
        "norms": norms("transformer.h.{bid}.ln_1.weight", "transformer.h.{bid}.ln_2.weight"),
    },
    "mpt-7b": {
        "family": "mpt",
        "embedding": "transformer.wte.weight",
        "qkv": ("transformer.blocks.{bid}.attn.Wqkv.weight", "contiguous", False),
        "heads": (4, 4, 16),
        "up": ["transformer.blocks.{bid}.ffn.up_proj.weight"],
        "norms": norms("transformer.blocks.{bid}.norm_1.weight", "transformer.blocks.{bid}.norm_2.weight"),
    },
    "olmo-7b (hf_olmo)": {
        "family": "olmo_v1",
        "embedding": "model.transformer.wte.weight",
        "qkv": ("model.transformer.blocks.{bid}.att_proj.weight", "contiguous", False),
        "heads": (4, 4, 16),
        "gate_up": ("model.transformer.blocks.{bid}.ff_proj.weight", "up_gate"),
        "norms": norms(None, None, "none"),
    },
    "olmo-7b-hf": llama_like("model.", "olmo", "model.embed_tokens.weight", 4, 4, 16, norms=norms(None, None, "none")),
    # OLMo-2's norms sit on block outputs: nothing normalises the attention input.
    "olmo-2": llama_like("model.", "olmo2", "model.embed_tokens.weight", 4, 4, 16, norms=norms(None, None, "none")),
    "bert (BertForMaskedLM)": {
        "family": "bert",
        "embedding": "bert.embeddings.word_embeddings.weight",
        "q": "bert.encoder.layer.{bid}.attention.self.query.weight",
        "k": "bert.encoder.layer.{bid}.attention.self.key.weight",
        "heads": (4, 4, 16),
        "up": ["bert.encoder.layer.{bid}.intermediate.dense.weight"],
        "norms": norms(
            "bert.encoder.layer.{prev}.output.LayerNorm.weight",
            "bert.encoder.layer.{bid}.attention.output.LayerNorm.weight",
            first="bert.embeddings.LayerNorm.weight",
        ),
    },
    "bert (BertModel)": {
        "family": "bert",
        "embedding": "embeddings.word_embeddings.weight",
        "q": "encoder.layer.{bid}.attention.self.query.weight",
        "k": "encoder.layer.{bid}.attention.self.key.weight",
        "heads": (4, 4, 16),
        "up": ["encoder.layer.{bid}.intermediate.dense.weight"],
        "norms": norms(
            "encoder.layer.{prev}.output.LayerNorm.weight",
            "encoder.layer.{bid}.attention.output.LayerNorm.weight",
            first="embeddings.LayerNorm.weight",
        ),
    },
    "roberta (RobertaForMaskedLM)": {
        "family": "bert",
        "embedding": "roberta.embeddings.word_embeddings.weight",
        "q": "roberta.encoder.layer.{bid}.attention.self.query.weight",
        "k": "roberta.encoder.layer.{bid}.attention.self.key.weight",
        "heads": (4, 4, 16),
        "up": ["roberta.encoder.layer.{bid}.intermediate.dense.weight"],
        "norms": norms(
            "roberta.encoder.layer.{prev}.output.LayerNorm.weight",
            "roberta.encoder.layer.{bid}.attention.output.LayerNorm.weight",
            first="roberta.embeddings.LayerNorm.weight",
        ),
    },
}


def all_examples() -> list[tuple[str, Any]]:
    return [(fam.name, ex) for fam in load_table().families.values() for ex in fam.examples]


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def first(config: dict[str, Any], *keys: str) -> Any:
    return next(config[k] for k in keys if k in config)


def pack_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, layout: str, nh: int, nkv: int, hd: int) -> np.ndarray:
    """Fused rows written the way the modeling code reads them (independent of arch/qkv.py)."""
    qh = [q[i * hd : (i + 1) * hd] for i in range(nh)]
    kh = [k[i * hd : (i + 1) * hd] for i in range(nkv)]
    vh = [v[i * hd : (i + 1) * hd] for i in range(nkv)]
    if layout == "contiguous":
        blocks = qh + kh + vh
    elif layout == "per_head":
        assert nh == nkv
        blocks = [b for i in range(nh) for b in (qh[i], kh[i], vh[i])]
    else:
        group = nh // nkv
        blocks = [b for g in range(nkv) for b in (*qh[g * group : (g + 1) * group], kh[g], vh[g])]
    return np.concatenate(blocks)


class Planted:
    """A tiny checkpoint of one example, and the matrices planted in it."""

    def __init__(self, example: Any, expected: dict[str, Any], folder: Path, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        cfg = text_config(example.config)
        self.vocab = int(first(cfg, "vocab_size", "padded_vocab_size", "embedding_size"))
        self.n_layers = int(first(cfg, "num_hidden_layers", "num_layers", "n_layer", "n_layers"))
        n_experts = int(cfg.get("num_local_experts", cfg.get("num_experts", 0)))
        nh, nkv, hd = expected["heads"]
        transposed_ffn = bool(expected.get("ffn_transposed", False))

        def mat(rows: int, cols: int) -> np.ndarray:
            return rng.standard_normal((rows, cols)).astype(np.float32)

        self.q = [mat(nh * hd, HIDDEN) for _ in range(self.n_layers)]
        self.k = [mat(nkv * hd, HIDDEN) for _ in range(self.n_layers)]
        self.ffn: dict[tuple[int, str], dict[int | None, np.ndarray]] = {}
        self.norms: dict[str, np.ndarray] = {}  # name -> planted gain (HIDDEN,)
        tensors: dict[str, np.ndarray] = {}
        ffn_names = {w: expected.get(w, []) for w in ("up", "gate")}
        for template in example.tensors:
            bids = range(self.n_layers) if "{bid}" in template else [None]
            for bid in bids:
                xids = range(n_experts) if "{xid}" in template else [None]
                for xid in xids:
                    name = template.format(bid=bid, xid=xid)
                    tensors[name] = self._tensor(template, bid, xid, expected, ffn_names, transposed_ffn, mat, rng)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(example.config))
        save_file(tensors, str(folder / "model.safetensors"))
        self.folder = folder

    def _tensor(self, template, bid, xid, expected, ffn_names, transposed_ffn, mat, rng) -> np.ndarray:
        nh, nkv, hd = expected["heads"]
        if template == expected["embedding"]:
            return mat(self.vocab, HIDDEN)
        if template == expected.get("q"):
            return self.q[bid]
        if template == expected.get("k"):
            return self.k[bid]
        if "qkv" in expected and template == expected["qkv"][0]:
            _, layout, transposed = expected["qkv"]
            fused = pack_qkv(self.q[bid], self.k[bid], mat(nkv * hd, HIDDEN), layout, nh, nkv, hd)
            return np.ascontiguousarray(fused.T) if transposed else fused
        if "gate_up" in expected and template == expected["gate_up"][0]:
            gate, up = mat(D_FF, HIDDEN), mat(D_FF, HIDDEN)
            self.ffn[(bid, "gate")] = {None: gate}
            self.ffn[(bid, "up")] = {None: up}
            return np.concatenate([gate, up] if expected["gate_up"][1] == "gate_up" else [up, gate])
        for weight, templates in ffn_names.items():
            if template in templates:
                w = mat(D_FF, HIDDEN)
                expert = xid if xid is not None else (-1 if "shared_expert" in template else None)
                self.ffn.setdefault((bid, weight), {})[expert] = w
                return np.ascontiguousarray(w.T) if transposed_ffn else w
        spec = expected["norms"]
        if template in {t.replace("{prev}", "{bid}") for t in (spec["attn"], spec["ffn"], spec["first"]) if t}:
            gain = rng.uniform(0.5, 2.0, HIDDEN).astype(np.float32)
            self.norms[template.format(bid=bid)] = gain
            return gain
        # Everything else (V, output, other norms, biases, towers, heads): content the resolver must not need.
        return rng.standard_normal((4,) if template.endswith("bias") else (4, 8)).astype(np.float32)


EXAMPLES = all_examples()


def test_every_family_has_an_example_a_source_and_an_expectation() -> None:
    table = load_table()
    for fam in table.families.values():
        assert fam.examples, f"family {fam.name} has no example"
        assert fam.source, f"family {fam.name} cites no source"
    ids = [ex.id for _, ex in EXAMPLES]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(EXPECTED)


@pytest.mark.parametrize(("family", "example"), EXAMPLES, ids=[ex.id for _, ex in EXAMPLES])
def test_example_tensors_hold_the_real_names(family: str, example: Any) -> None:
    exp = EXPECTED[example.id]
    assert exp["family"] == family
    needed = [exp["embedding"], *([exp["qkv"][0]] if "qkv" in exp else [exp["q"], exp["k"]])]
    missing = [n for n in needed if n not in example.tensors]
    assert not missing, f"{example.id}: example_tensors lack {missing}"


@pytest.mark.parametrize(("family", "example"), EXAMPLES, ids=[ex.id for _, ex in EXAMPLES])
def test_example_resolves_and_reads_planted_weights(family: str, example: Any, tmp_path: Path) -> None:
    exp = EXPECTED[example.id]
    planted = Planted(example, exp, tmp_path / "ckpt")
    nh, nkv, hd = exp["heads"]
    with open_source(planted.folder) as source:
        view = resolve(source)
        assert view.family == exp["family"]
        assert (view.hidden_size, view.n_layers, view.vocab_size) == (HIDDEN, planted.n_layers, planted.vocab)
        assert (view.n_heads, view.n_kv_heads, view.head_dim) == (nh, nkv, hd)
        assert view.embedding.name == exp["embedding"]
        for bid, layer in enumerate(view.layers):
            assert layer.index == bid
            if "qkv" in exp:
                name, layout, transposed = exp["qkv"]
                for ref, part in ((layer.q, "q"), (layer.k, "k")):
                    assert (ref.name, ref.part, ref.layout, ref.transposed) == (
                        name.format(bid=bid),
                        part,
                        layout,
                        transposed,
                    )
            else:
                assert (layer.q.name, layer.k.name) == (exp["q"].format(bid=bid), exp["k"].format(bid=bid))
            q, k = read_attention(source, view, layer)
            np.testing.assert_array_equal(q, planted.q[bid])
            np.testing.assert_array_equal(k, planted.k[bid])
            check_norms(source, view, layer, exp["norms"], planted)
            for weight in ("up", "gate"):
                got = read_ffn(source, view, layer, weight)
                want = planted.ffn.get((bid, weight), {})
                assert sorted(want, key=str) == sorted((e for e, _ in got), key=str), f"layer {bid} {weight}"
                for expert, matrix in got:
                    np.testing.assert_array_equal(matrix, want[expert])
        tower_prefixes = tuple(load_table().defaults["ignore_prefixes"])
        towers = [n for n in source.names() if n.startswith(tower_prefixes)]
        if towers:
            assert any(note.startswith(f"{len(towers)} tensor(s) of vision/audio towers") for note in view.notes)


def check_norms(source: Any, view: Any, layer: Any, spec: dict[str, Any], planted: Planted) -> None:
    """The norms feeding attention and the FFN are the expected tensors, read with the family's offset."""
    bid = layer.index
    assert (view.norm_kind, view.norm_offset) == (spec["kind"], spec["offset"])
    want_attn = spec["first"] if bid == 0 and spec["first"] else spec["attn"]
    for ref, want in ((layer.attn_norm, want_attn), (layer.ffn_norm, spec["ffn"])):
        assert (ref.name if ref is not None else None) == (want.format(bid=bid, prev=bid - 1) if want else None)
        if ref is not None:
            np.testing.assert_array_equal(read_norm(source, view, ref), planted.norms[ref.name] + np.float32(spec["offset"]))


@pytest.mark.parametrize(
    "example_id",
    [
        "llama",
        "falcon-40b (new decoder architecture)",
        "gpt2 (openai-community names)",
        "chatglm3-6b",
        "pythia",
        "internlm2",
    ],
)
def test_a_checkpoint_compared_with_itself_scores_one(example_id: str, tmp_path: Path) -> None:
    from awmtrace.pipeline import compare_models, open_model

    example = next(ex for _, ex in EXAMPLES if ex.id == example_id)
    planted = Planted(example, EXPECTED[example_id], tmp_path / "ckpt", seed=3)
    with open_model(planted.folder) as a, open_model(planted.folder) as b:
        result = compare_models(a, b, align="ids", min_shared_tokens=16)
    assert result.score >= 0.99
    assert len(result.layers) == planted.n_layers


def write_hf(folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def llama_tensors(n_layers: int = 2, nh: int = 4, nkv: int = 2, hd: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {"model.embed_tokens.weight": rng.standard_normal((96, HIDDEN))}
    for i in range(n_layers):
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((nh * hd, HIDDEN))
        out[f"model.layers.{i}.self_attn.k_proj.weight"] = rng.standard_normal((nkv * hd, HIDDEN))
        out[f"model.layers.{i}.self_attn.v_proj.weight"] = rng.standard_normal((nkv * hd, HIDDEN))
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(HIDDEN)
    return out


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def resolve_dir(folder: Path):
    with open_source(folder) as source:
        return resolve(source)


def test_unrecognisable_names_list_the_tensors_seen(tmp_path: Path) -> None:
    folder = write_hf(
        tmp_path / "m",
        {"architectures": ["AlienForCausalLM"]},
        {"blob.alpha": np.zeros((4, 4)), "blob.beta": np.zeros(4)},
    )
    with pytest.raises(UnsupportedArchitecture, match=r"unknown architecture 'AlienForCausalLM'.*blob\.alpha, blob\.beta"):
        resolve_dir(folder)


def test_undeclared_architecture_with_separate_qk_resolves_by_names(tmp_path: Path) -> None:
    folder = write_hf(tmp_path / "m", {"architectures": ["SomeNewForCausalLM"], "num_attention_heads": 4}, llama_tensors())
    view = resolve_dir(folder)
    assert view.family == "llama" and view.n_kv_heads == 2
    assert any("not in the table" in note for note in view.notes)


def test_meta_original_llama_names_without_config(tmp_path: Path) -> None:
    # consolidated.*.pth of meta-llama/Llama-2-7b ships params.json, not config.json: names alone decide.
    rng = np.random.default_rng(2)
    tensors = {
        "tok_embeddings.weight": rng.standard_normal((96, HIDDEN)),
        "output.weight": rng.standard_normal((96, HIDDEN)),
    }
    for i in range(2):
        for w, rows in (("wq", 64), ("wk", 64), ("wv", 64), ("wo", 64)):
            tensors[f"layers.{i}.attention.{w}.weight"] = rng.standard_normal((rows, HIDDEN))
        for w in ("w1", "w3"):
            tensors[f"layers.{i}.feed_forward.{w}.weight"] = rng.standard_normal((D_FF, HIDDEN))
        tensors[f"layers.{i}.attention_norm.weight"] = np.ones(HIDDEN)
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "consolidated.safetensors"))
    view = resolve_dir(folder)
    assert view.family == "llama" and view.n_layers == 2
    assert view.layers[1].q.name == "layers.1.attention.wq.weight"
    assert view.layers[1].up[0].name == "layers.1.feed_forward.w3.weight"
    assert view.layers[1].gate[0].name == "layers.1.feed_forward.w1.weight"


def test_undeclared_architecture_with_fused_qkv_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"wte.weight": rng.standard_normal((96, HIDDEN))}
    for i in range(2):
        tensors[f"h.{i}.attn.c_attn.weight"] = rng.standard_normal((HIDDEN, 3 * HIDDEN))
    folder = write_hf(tmp_path / "m", {"n_head": 4}, tensors)
    with pytest.raises(UnsupportedArchitecture, match=r"fused QKV.*cannot be known from names and shapes"):
        resolve_dir(folder)


def test_fused_qkv_without_head_counts_is_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"transformer.word_embeddings.weight": rng.standard_normal((96, HIDDEN))}
    for i in range(2):
        tensors[f"transformer.h.{i}.self_attention.query_key_value.weight"] = rng.standard_normal((3 * HIDDEN, HIDDEN))
    folder = write_hf(tmp_path / "m", {"architectures": ["FalconForCausalLM"], "model_type": "falcon"}, tensors)
    with pytest.raises(UnsupportedArchitecture, match=r"query_key_value.*head counts.*config gives none"):
        resolve_dir(folder)


def test_fused_qkv_rows_that_do_not_fit_the_heads_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((96, HIDDEN))}
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.W_pack.weight"] = rng.standard_normal((3 * HIDDEN, HIDDEN))
    cfg = {"architectures": ["BaichuanForCausalLM"], "num_attention_heads": 5}
    with pytest.raises(UnsupportedArchitecture, match=r"W_pack.*do not fit"):
        resolve_dir(write_hf(tmp_path / "a", cfg, tensors))
    cfg = {"architectures": ["BaichuanForCausalLM"], "num_attention_heads": 4, "head_dim": 8}
    with pytest.raises(UnsupportedArchitecture, match=r"head_dim 8"):
        resolve_dir(write_hf(tmp_path / "b", cfg, tensors))


def test_a_missing_q_names_the_layer_and_its_tensors(tmp_path: Path) -> None:
    tensors = llama_tensors()
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(MissingTensor, match=r"layer 1 has no attention Q and K.*model\.layers\.1\.self_attn\.k_proj\.weight"):
        resolve_dir(write_hf(tmp_path / "m", LLAMA_CONFIG, tensors))


def test_layers_the_config_promises_are_never_dropped(tmp_path: Path) -> None:
    with pytest.raises(MissingTensor, match=r"layer 2 has no attention Q and K.*its tensors: none"):
        resolve_dir(write_hf(tmp_path / "m", {**LLAMA_CONFIG, "num_hidden_layers": 3}, llama_tensors()))


def test_two_tensors_claiming_one_role_are_refused(tmp_path: Path) -> None:
    tensors = llama_tensors()
    # A BERT-style name gguf maps to attn_q for llama too: an unlisted tower must not slip in silently.
    tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((64, HIDDEN))
    with pytest.raises(UnsupportedArchitecture, match=r"both look like attn_q of layer 0"):
        resolve_dir(write_hf(tmp_path / "m", LLAMA_CONFIG, tensors))


def test_tied_embeddings_biases_and_extra_tensors_are_not_needed(tmp_path: Path) -> None:
    tensors = llama_tensors()
    rng = np.random.default_rng(1)
    tensors.update(
        {
            "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(64),
            "model.layers.0.self_attn.k_proj.bias": rng.standard_normal(32),
            "model.layers.0.self_attn.rotary_emb.inv_freq": rng.standard_normal(8),
            "model.layers.1.mlp.some_new_adapter.weight": rng.standard_normal((4, 8)),
            "score.weight": rng.standard_normal((2, HIDDEN)),
        }
    )
    view = resolve_dir(write_hf(tmp_path / "m", {**LLAMA_CONFIG, "tie_word_embeddings": True}, tensors))
    assert view.n_layers == 2 and view.layers[0].up == () and view.layers[0].gate == ()


def test_chatglm_without_multi_query_reads_per_head(tmp_path: Path) -> None:
    example = next(ex for _, ex in EXAMPLES if ex.id == "chatglm3-6b")
    config = {k: v for k, v in example.config.items() if k not in ("multi_query_attention", "multi_query_group_num")}
    expected = {
        **EXPECTED["chatglm3-6b"],
        "qkv": (EXPECTED["chatglm3-6b"]["qkv"][0], "per_head", False),
        "heads": (4, 4, 16),
    }
    planted = Planted(type(example)(example.id, config, example.tensors), expected, tmp_path / "m")
    with open_source(planted.folder) as source:
        view = resolve(source)
        assert view.n_kv_heads == 4 and view.layers[0].q.layout == "per_head"
        q, k = read_attention(source, view, view.layers[1])
    np.testing.assert_array_equal(q, planted.q[1])
    np.testing.assert_array_equal(k, planted.k[1])


def test_mpt_multi_query_and_grouped_query_variants(tmp_path: Path) -> None:
    example = next(ex for _, ex in EXAMPLES if ex.id == "mpt-7b")
    for attn, nkv in (
        ({"attn_type": "multiquery_attention"}, 1),
        ({"attn_type": "grouped_query_attention", "kv_n_heads": 2}, 2),
    ):
        config = {**example.config, "attn_config": attn}
        expected = {**EXPECTED["mpt-7b"], "heads": (4, nkv, 16)}
        planted = Planted(type(example)(example.id, config, example.tensors), expected, tmp_path / attn["attn_type"])
        with open_source(planted.folder) as source:
            view = resolve(source)
            assert view.n_kv_heads == nkv
            q, k = read_attention(source, view, view.layers[0])
        np.testing.assert_array_equal(k, planted.k[0])


def test_kv_heads_follow_the_k_shape_when_the_config_disagrees(tmp_path: Path) -> None:
    # PLaMo-13B's config carries a num_key_value_heads that llama.cpp calls wrong; K's rows decide.
    example = next(ex for _, ex in EXAMPLES if ex.id == "plamo-13b")
    planted = Planted(
        type(example)(example.id, {**example.config, "num_key_value_heads": 4}, example.tensors),
        EXPECTED["plamo-13b"],
        tmp_path / "m",
    )
    view = resolve_dir(planted.folder)
    assert view.n_kv_heads == 2
    assert any("config gives 4 KV heads" in note for note in view.notes)


def write_gguf(path: Path, arch: str, heads: tuple[int, int | None], tensors: dict[str, np.ndarray], n_layers: int = 2) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_embedding_length(HIDDEN)
    w.add_head_count(heads[0])
    if heads[1] is not None:
        w.add_head_count_kv(heads[1])
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_model(tmp_path: Path, arch: str, nh: int, nkv: int, fused: bool, extra: dict[str, np.ndarray] | None = None):
    rng = np.random.default_rng(11)
    hd = HIDDEN // nh
    q = [rng.standard_normal((nh * hd, HIDDEN)).astype(np.float32) for _ in range(2)]
    k = [rng.standard_normal((nkv * hd, HIDDEN)).astype(np.float32) for _ in range(2)]
    tensors = {"token_embd.weight": rng.standard_normal((96, HIDDEN))}
    for i in range(2):
        v = rng.standard_normal((nkv * hd, HIDDEN))
        if fused:
            tensors[f"blk.{i}.attn_qkv.weight"] = np.concatenate([q[i], k[i], v])
        else:
            tensors.update({f"blk.{i}.attn_q.weight": q[i], f"blk.{i}.attn_k.weight": k[i], f"blk.{i}.attn_v.weight": v})
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(HIDDEN)
    tensors.update(extra or {})
    return write_gguf(tmp_path / f"{arch}.gguf", arch, (nh, nkv), tensors), q, k


@pytest.mark.parametrize(
    ("arch", "fused", "family"),
    [("llama", False, "llama"), ("falcon", True, "falcon"), ("phi3", True, "phi3"), ("gpt2", True, "gpt2")],
)
def test_gguf_resolves_canonical_names(arch: str, fused: bool, family: str, tmp_path: Path) -> None:
    # Falcon's and GPT-2's converters write attn_qkv as contiguous Q, K, V (Falcon reorders its KV groups,
    # GPT-2 transposes the Conv1D back), so these files are cut contiguously and without a transpose.
    path, q, k = gguf_model(tmp_path, arch, 4, 2 if arch != "gpt2" else 4, fused)
    with open_source(path) as source:
        view = resolve(source)
        assert view.family == family and view.format == "gguf"
        assert view.embedding.name == "token_embd.weight"
        for i, layer in enumerate(view.layers):
            assert layer.q.transposed is False
            assert layer.attn_norm is not None and layer.attn_norm.name == f"blk.{i}.attn_norm.weight"
            got_q, got_k = read_attention(source, view, layer)
            np.testing.assert_array_equal(got_q, q[i])
            np.testing.assert_array_equal(got_k, k[i])


def test_gguf_fused_gate_up_and_stacked_experts(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gate, up = (
        rng.standard_normal((D_FF, HIDDEN)).astype(np.float32),
        rng.standard_normal((D_FF, HIDDEN)).astype(np.float32),
    )
    extra = {f"blk.{i}.ffn_up.weight": np.concatenate([gate, up]) for i in range(2)}
    path, _, _ = gguf_model(tmp_path, "phi3", 4, 2, True, extra)
    with open_source(path) as source:
        view = resolve(source)
        assert dict(read_ffn(source, view, view.layers[0], "up"))[None].tolist() == up.tolist()
        assert dict(read_ffn(source, view, view.layers[0], "gate"))[None].tolist() == gate.tolist()
    experts = rng.standard_normal((4, D_FF, HIDDEN)).astype(np.float32)
    shared = rng.standard_normal((D_FF, HIDDEN)).astype(np.float32)
    extra = {f"blk.{i}.ffn_up_exps.weight": experts for i in range(2)} | {f"blk.{i}.ffn_up_shexp.weight": shared for i in range(2)}
    path, _, _ = gguf_model(tmp_path, "qwen2moe", 4, 4, False, extra)
    with open_source(path) as source:
        view = resolve(source)
        got = dict(read_ffn(source, view, view.layers[1], "up"))
    assert sorted(got, key=str) == sorted([0, 1, 2, 3, -1], key=str)
    np.testing.assert_array_equal(got[2], experts[2])
    np.testing.assert_array_equal(got[-1], shared)


def test_per_expert_gguf_names_and_ambiguous_ffn_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    experts = [rng.standard_normal((D_FF, HIDDEN)).astype(np.float32) for _ in range(3)]
    extra = {f"blk.{i}.ffn_up.{x}.weight": experts[x] for i in range(2) for x in range(3)}
    path, q, _ = gguf_model(tmp_path, "llama", 4, 2, False, extra)
    with open_source(path) as source:
        view = resolve(source)
        got = dict(read_ffn(source, view, view.layers[0], "up"))
    assert sorted(got) == [0, 1, 2]
    np.testing.assert_array_equal(got[1], experts[1])
    # Two tensors that both look like layer 0's dense FFN up projection: attention still resolves,
    # that FFN projection is dropped with a note instead of a guess.
    tensors = llama_tensors()
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((D_FF, HIDDEN))
    tensors["model.layers.0.mlp.c_fc.weight"] = np.zeros((D_FF, HIDDEN))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((D_FF, HIDDEN))
    view = resolve_dir(write_hf(tmp_path / "m", LLAMA_CONFIG, tensors))
    assert view.layers[0].up == () and len(view.layers[1].up) == 1
    assert any("layer 0" in note and "FFN up" in note for note in view.notes)


def test_gguf_fused_qkv_without_a_known_converter_layout_is_refused(tmp_path: Path) -> None:
    # llama.cpp's Baichuan converter splits W_pack, so a baichuan GGUF with attn_qkv has no known packing.
    path, _, _ = gguf_model(tmp_path, "baichuan", 4, 4, True)
    with pytest.raises(UnsupportedArchitecture, match=r"attn_qkv.*no QKV layout for GGUF files of family 'baichuan'"):
        resolve_dir(path)
    path, _, _ = gguf_model(tmp_path, "persimmon", 4, 4, True)
    with pytest.raises(UnsupportedArchitecture, match=r"'persimmon' is not in architectures.toml.*fused QKV"):
        resolve_dir(path)


def test_gguf_of_an_unlisted_architecture_with_separate_qk(tmp_path: Path) -> None:
    path, q, _ = gguf_model(tmp_path, "stablelm", 4, 4, False)
    with open_source(path) as source:
        view = resolve(source)
        got_q, _ = read_attention(source, view, view.layers[1])
    np.testing.assert_array_equal(got_q, q[1])
    assert any("'stablelm' is not in the table" in note for note in view.notes)


RELIED_ON = [
    ("LLAMA", "model.embed_tokens.weight", ("token_embd", None)),
    ("LLAMA", "model.layers.3.self_attn.q_proj.weight", ("attn_q", 3)),
    ("LLAMA", "model.layers.3.self_attn.k_proj.weight", ("attn_k", 3)),
    ("LLAMA", "model.layers.3.mlp.up_proj.weight", ("ffn_up", 3)),
    ("LLAMA", "model.layers.3.mlp.gate_proj.weight", ("ffn_gate", 3)),
    ("LLAMA", "blk.3.attn_q.weight", ("attn_q", 3)),
    ("LLAMA", "token_embd.weight", ("token_embd", None)),
    ("LLAMA", "blk.3.ffn_gate_exps.weight", ("ffn_gate_exps", 3)),
    ("LLAMA", "model.layers.3.block_sparse_moe.gate.weight", ("ffn_gate_inp", 3)),
    ("QWEN", "transformer.h.3.attn.c_attn.weight", ("attn_qkv", 3)),
    ("QWEN", "transformer.h.3.mlp.w1.weight", ("ffn_up", 3)),
    ("QWEN", "transformer.h.3.mlp.w2.weight", ("ffn_gate", 3)),
    ("QWEN2MOE", "model.layers.3.mlp.shared_expert.up_proj.weight", ("ffn_up_shexp", 3)),
    ("QWEN2MOE", "model.layers.3.mlp.shared_expert_gate.weight", ("ffn_gate_inp_shexp", 3)),
    ("PHI3", "model.layers.3.self_attn.qkv_proj.weight", ("attn_qkv", 3)),
    ("CHATGLM", "embedding.word_embeddings.weight", ("token_embd", None)),
    ("CHATGLM", "encoder.layers.3.self_attention.query_key_value.weight", ("attn_qkv", 3)),
    ("FALCON", "transformer.word_embeddings.weight", ("token_embd", None)),
    ("FALCON", "transformer.h.3.self_attention.query_key_value.weight", ("attn_qkv", 3)),
    ("GPTNEOX", "gpt_neox.embed_in.weight", ("token_embd", None)),
    ("GPTNEOX", "gpt_neox.layers.3.attention.query_key_value.weight", ("attn_qkv", 3)),
    ("BLOOM", "h.3.self_attention.query_key_value.weight", ("attn_qkv", 3)),
    ("GPT2", "h.3.attn.c_attn.weight", ("attn_qkv", 3)),
    ("GPT2", "wte.weight", ("token_embd", None)),
    ("GPT2", "wpe.weight", ("position_embd", None)),
    ("JAIS", "transformer.h.3.mlp.c_fc2.weight", ("ffn_gate", 3)),
    ("MPT", "transformer.blocks.3.attn.Wqkv.weight", ("attn_qkv", 3)),
    ("INTERNLM2", "model.tok_embeddings.weight", ("token_embd", None)),
    ("INTERNLM2", "model.layers.3.feed_forward.w1.weight", ("ffn_gate", 3)),
    ("INTERNLM2", "model.layers.3.feed_forward.w3.weight", ("ffn_up", 3)),
    ("PLAMO", "model.layers.layers.3.self_attn.k_proj.weight", ("attn_k", 3)),
    ("BERT", "embeddings.word_embeddings.weight", ("token_embd", None)),
    ("BERT", "encoder.layer.3.attention.self.query.weight", ("attn_q", 3)),
    ("BERT", "encoder.layer.3.intermediate.dense.weight", ("ffn_up", 3)),
    ("GEMMA3", "model.layers.3.self_attn.q_norm.weight", ("attn_q_norm", 3)),
    # Names gguf must NOT know (the table's patterns cover them), and what is never a role.
    ("BAICHUAN", "model.layers.3.self_attn.W_pack.weight", None),
    ("INTERNLM2", "model.layers.3.attention.wqkv.weight", None),
    ("LLAMA", "model.layers.3.block_sparse_moe.experts.0.w1.weight", None),
    ("LLAMA", "model.layers.3.self_attn.q_proj.bias", None),
]


@pytest.mark.parametrize(("arch", "name", "role"), RELIED_ON, ids=[f"{a}:{n}" for a, n, _ in RELIED_ON])
def test_tensor_name_map_lookups(arch: str, name: str, role: tuple[str, int | None] | None) -> None:
    assert canonical_role(name, gguf_arch(arch), 4) == role


def test_gguf_names_are_read_as_roles_without_a_map() -> None:
    assert gguf_role("blk.3.attn_qkv.weight") == ("attn_qkv", 3, None)
    assert gguf_role("token_embd.weight") == ("token_embd", None, None)
    assert gguf_role("blk.3.ffn_gate.5.weight") == ("ffn_gate", 3, 5)  # early Mixtral GGUF: one tensor per expert
    assert gguf_role("blk.3.attn_q.bias") is None


def test_gguf_arch_accepts_both_spellings() -> None:
    assert gguf_arch("GPTNEOX") is MODEL_ARCH.GPTNEOX
    assert gguf_arch("gptneox") is MODEL_ARCH.GPTNEOX
    with pytest.raises(KeyError):
        gguf_arch("no-such-arch")


def test_arch_specific_mappings_do_not_leak_into_other_maps() -> None:
    # ARCTIC's arch_block_mappings_cfg replaces FFN_NORM's names in the shared class-level dict when its
    # TensorNameMap is built; the adapter must restore it so Llama keeps post_attention_layernorm -> ffn_norm.
    before = dict(TensorNameMap.block_mappings_cfg)
    arch_names._name_map.cache_clear()
    try:
        assert canonical_role("model.layers.0.post_attention_layernorm.weight", MODEL_ARCH.ARCTIC, 2) == (
            "ffn_norm_exps",
            0,
        )
        assert TensorNameMap.block_mappings_cfg == before
        assert canonical_role("model.layers.0.post_attention_layernorm.weight", MODEL_ARCH.LLAMA, 2) == ("ffn_norm", 0)
    finally:
        arch_names._name_map.cache_clear()


def _table_text() -> str:
    from importlib import resources

    return (resources.files("awmtrace.arch") / "architectures.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '[families.llama]\ngguf_arch = "LLAMA"\n',
            '[families.llama]\ngguf_arch = "LLAMA"\nqkv_layuot = "contiguous"\n',
            r"\[families\.llama\]: unknown key\(s\) qkv_layuot",
        ),
        (
            'model_types = ["llama", "llava_llama"]',
            'model_types = "llama"',
            r"\[families\.llama\]: model_types = 'llama' has the wrong type",
        ),
        (
            '[families.llama]\ngguf_arch = "LLAMA"\nnorm = "rms"\n',
            '[families.llama]\ngguf_arch = "LLAMA"\n',
            r"\[families\.llama\]: missing required key\(s\) norm",
        ),
        (
            '[families.llama]\ngguf_arch = "LLAMA"\nnorm = "rms"\n',
            '[families.llama]\ngguf_arch = "LLAMA"\nnorm = "rsm"\n',
            r"norm = 'rsm'; expected one of rms",
        ),
        (
            '[families.llama]\ngguf_arch = "LLAMA"\n',
            '[families.llama]\ngguf_arch = "LLAMA"\nffn_norm = ["ffn_nrom"]\n',
            r"ffn_norm = 'ffn_nrom'",
        ),
        ('gguf_arch = "LLAMA"\n', 'gguf_arch = "LAMA"\n', r"gguf_arch = 'LAMA' is not a gguf MODEL_ARCH"),
        (
            'role = "attn_qkv", layout = "kv_group" }',
            'role = "attn_qkv", layout = "kv_group", transposed = "yes" }',
            r"transposed = 'yes' has the wrong type",
        ),
        ("n_heads_keys = [", "n_head_keys = [", r"\[defaults\]: unknown key\(s\) n_head_keys"),
        ('id = "llama"\n', 'id = "llama"\nname = "x"\n', r"example 'llama': unknown key\(s\) name"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-norm",
        "bad-norm-kind",
        "bad-norm-role",
        "bad-gguf-arch",
        "pattern-type",
        "defaults",
        "example",
    ],
)
def test_the_table_loader_is_strict(old: str, new: str, message: str) -> None:
    from awmtrace.arch.table import parse_table

    text = _table_text()
    assert old in text
    with pytest.raises(ValueError, match=message):
        parse_table(text.replace(old, new, 1))


def test_the_packaged_table_parses() -> None:
    from awmtrace.arch.table import parse_table

    assert parse_table(_table_text()).families.keys() == load_table().families.keys()
