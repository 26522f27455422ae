"""Synthetic Llama-style checkpoints with planted relationships.

Used by ``awm demo``, the test-suite and the benchmarks. A :class:`SynthModel`
holds the weights of a small decoder in memory; transforms return related
models (drifted, hidden-permuted/sign-flipped/scaled, width- or depth-pruned)
and writers save them as real checkpoints: a Hugging Face directory
(``config.json``, ``tokenizer.json``, safetensors, optionally sharded and
bf16) or a GGUF file (F32 or quantised, Q/K rows permuted the way llama.cpp's
converter does for rope).

Norm gains (RMSNorm weights feeding attention and the FFN) are all ones
unless :func:`with_gains` plants heterogeneous ones; :func:`fold_gains` and
:func:`awq_scale` move them into the next linear layers without changing the
function, as quantisation toolchains do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.io.vocab import bytes_to_unicode

__all__ = [
    "SynthModel",
    "random_llama",
    "drift",
    "permute_hidden",
    "prune_width",
    "prune_depth",
    "with_gains",
    "fold_gains",
    "awq_scale",
    "upscale_depth",
    "extend_vocab",
    "write_hf",
    "write_gguf",
    "byte_level_vocab",
]

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "hu", "ja", "be", "co", "wy", "xi"]


def byte_level_vocab(size: int) -> list[str]:
    """``size`` byte-level BPE tokens: the 256 byte symbols, then ``Ġ``-prefixed pseudo-words."""
    table = bytes_to_unicode()
    tokens = [table[b] for b in range(256)]
    space = table[ord(" ")]
    i = 0
    while len(tokens) < size:
        a, b, c = i % 20, (i // 20) % 20, (i // 400) % 20
        word = _SYLLABLES[a] + _SYLLABLES[b] + (_SYLLABLES[c] if i >= 400 else "")
        tokens.append(space + word if (i // 8000) % 2 == 0 else word)
        i += 1
    return tokens[:size]


@dataclass
class SynthModel:
    """Weights of a Llama-style decoder, linear layers stored ``(d_out, d_in)``."""

    embed: np.ndarray  # (vocab, hidden)
    q: list[np.ndarray]  # (n_heads*head_dim, hidden) per layer
    k: list[np.ndarray]  # (n_kv_heads*head_dim, hidden)
    v: list[np.ndarray]
    o: list[np.ndarray]  # (hidden, n_heads*head_dim)
    gate: list[np.ndarray]  # (ffn, hidden)
    up: list[np.ndarray]
    down: list[np.ndarray]  # (hidden, ffn)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tokens: list[str] = field(default_factory=list)
    attn_norm: list[np.ndarray] = field(default_factory=list)  # (hidden,) gain feeding q/k/v per layer; empty: all ones
    ffn_norm: list[np.ndarray] = field(default_factory=list)  # (hidden,) gain feeding gate/up per layer; empty: all ones

    @property
    def hidden(self) -> int:
        return int(self.embed.shape[1])

    def gains(self, which: str) -> list[np.ndarray]:
        """Per-layer effective gains (``which``: ``"attn"`` or ``"ffn"``), ones where none were planted."""
        held = self.attn_norm if which == "attn" else self.ffn_norm
        return list(held) if held else [np.ones(self.hidden, dtype=np.float32) for _ in range(self.n_layers)]

    @property
    def n_layers(self) -> int:
        return len(self.q)

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": int(self.up[0].shape[0]),
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": int(self.embed.shape[0]),
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        }


def random_llama(
    hidden: int = 256,
    n_layers: int = 4,
    n_heads: int = 8,
    n_kv_heads: int = 4,
    vocab: int = 2048,
    ffn: int | None = None,
    seed: int = 0,
) -> SynthModel:
    """An untrained model with Gaussian weights (the 'pre-trained base' of the demo)."""
    rng = np.random.default_rng(seed)
    head_dim = hidden // n_heads
    ffn = ffn or 2 * hidden

    def lin(d_out: int, d_in: int) -> np.ndarray:
        return (rng.standard_normal((d_out, d_in), dtype=np.float32) / np.sqrt(d_in)).astype(np.float32)

    return SynthModel(
        embed=rng.standard_normal((vocab, hidden), dtype=np.float32) * np.float32(0.02),
        q=[lin(n_heads * head_dim, hidden) for _ in range(n_layers)],
        k=[lin(n_kv_heads * head_dim, hidden) for _ in range(n_layers)],
        v=[lin(n_kv_heads * head_dim, hidden) for _ in range(n_layers)],
        o=[lin(hidden, n_heads * head_dim) for _ in range(n_layers)],
        gate=[lin(ffn, hidden) for _ in range(n_layers)],
        up=[lin(ffn, hidden) for _ in range(n_layers)],
        down=[lin(hidden, ffn) for _ in range(n_layers)],
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        tokens=byte_level_vocab(vocab),
    )


def _map(m: SynthModel, fn_in: Any, fn_out: Any, fn_embed: Any, fn_gain: Any = lambda g: g) -> SynthModel:
    """Apply ``fn_in`` to matrices reading the hidden state, ``fn_out`` to those writing it, ``fn_gain`` to norm gains.

    Results are made C-contiguous: fancy indexing can return Fortran-ordered
    arrays, and ``safetensors.numpy.save_file`` writes an array's memory as is.
    """
    c = np.ascontiguousarray
    return replace(
        m,
        attn_norm=[c(fn_gain(g)) for g in m.attn_norm],
        ffn_norm=[c(fn_gain(g)) for g in m.ffn_norm],
        embed=c(fn_embed(m.embed)),
        q=[c(fn_in(w)) for w in m.q],
        k=[c(fn_in(w)) for w in m.k],
        v=[c(fn_in(w)) for w in m.v],
        gate=[c(fn_in(w)) for w in m.gate],
        up=[c(fn_in(w)) for w in m.up],
        o=[c(fn_out(w)) for w in m.o],
        down=[c(fn_out(w)) for w in m.down],
    )


def drift(m: SynthModel, relative: float = 0.3, seed: int = 1) -> SynthModel:
    """Fine-tune-like drift: every matrix plus Gaussian noise of ``relative`` times its RMS."""
    rng = np.random.default_rng(seed)

    def noisy(w: np.ndarray) -> np.ndarray:
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        return (w + rng.standard_normal(w.shape, dtype=np.float32) * np.float32(relative * rms)).astype(np.float32)

    return _map(m, noisy, noisy, noisy)


def permute_hidden(m: SynthModel, seed: int = 2, scale: float = 3.0) -> tuple[SynthModel, np.ndarray, np.ndarray]:
    """Permute and sign-flip the hidden dimensions and scale the embedding, planting a known transform.

    Returns ``(model, perm, signs)``: new hidden dim ``j`` is old dim ``perm[j]`` times ``signs[j]``.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(m.hidden)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=m.hidden)
    new = _map(
        m,
        lambda w: (w[:, perm] * signs[None, :]).astype(np.float32),
        lambda w: (w[perm, :] * signs[:, None]).astype(np.float32),
        lambda e: (e[:, perm] * signs[None, :] * np.float32(scale)).astype(np.float32),
        # RMSNorm is invariant to the permutation, signs and scale of its input: gains only move with their dimension.
        lambda g: g[perm],
    )
    return new, perm, signs


def prune_width(m: SynthModel, keep_fraction: float = 0.75, seed: int = 3) -> SynthModel:
    """Keep a random subset of hidden dimensions (and heads), as width pruning does."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(m.hidden, size=int(m.hidden * keep_fraction), replace=False))
    groups = max(1, int(m.n_kv_heads * keep_fraction))
    per_group = m.n_heads // m.n_kv_heads
    kv_keep = np.arange(groups)
    q_heads = np.concatenate([np.arange(g * per_group, (g + 1) * per_group) for g in kv_keep])

    def rows(heads: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(h * m.head_dim, (h + 1) * m.head_dim) for h in heads])

    qr, kr = rows(q_heads), rows(kv_keep)
    return replace(
        m,
        embed=np.ascontiguousarray(m.embed[:, keep]),
        q=[np.ascontiguousarray(w[qr][:, keep]) for w in m.q],
        k=[np.ascontiguousarray(w[kr][:, keep]) for w in m.k],
        v=[np.ascontiguousarray(w[kr][:, keep]) for w in m.v],
        o=[np.ascontiguousarray(w[keep][:, qr]) for w in m.o],
        gate=[np.ascontiguousarray(w[:, keep]) for w in m.gate],
        up=[np.ascontiguousarray(w[:, keep]) for w in m.up],
        down=[np.ascontiguousarray(w[keep]) for w in m.down],
        attn_norm=[np.ascontiguousarray(g[keep]) for g in m.attn_norm],
        ffn_norm=[np.ascontiguousarray(g[keep]) for g in m.ffn_norm],
        n_heads=len(q_heads),
        n_kv_heads=groups,
    )


def prune_depth(m: SynthModel, keep_layers: list[int]) -> SynthModel:
    """Keep only the listed layers, as depth pruning does."""
    return replace(
        m,
        q=[m.q[i] for i in keep_layers],
        k=[m.k[i] for i in keep_layers],
        v=[m.v[i] for i in keep_layers],
        o=[m.o[i] for i in keep_layers],
        gate=[m.gate[i] for i in keep_layers],
        up=[m.up[i] for i in keep_layers],
        down=[m.down[i] for i in keep_layers],
        attn_norm=[m.attn_norm[i] for i in keep_layers] if m.attn_norm else [],
        ffn_norm=[m.ffn_norm[i] for i in keep_layers] if m.ffn_norm else [],
    )


def upscale_depth(m: SynthModel, order: list[int]) -> SynthModel:
    """Depth up-scaling (as SOLAR's): a deeper model whose layers are copies of ``order``'s layers, some repeated."""
    return replace(
        prune_depth(m, order),
        q=[m.q[i].copy() for i in order],
        k=[m.k[i].copy() for i in order],
    )


def extend_vocab(m: SynthModel, n_new: int, seed: int = 5) -> SynthModel:
    """Add ``n_new`` tokens whose embedding rows are the mean row plus tiny noise (Hugging Face's mean initialisation on resize)."""
    rng = np.random.default_rng(seed)
    rows = m.embed.mean(axis=0, keepdims=True) + rng.standard_normal((n_new, m.hidden), dtype=np.float32) * np.float32(1e-4)
    have = set(m.tokens)
    new_tokens = [t for t in (f"<extra_tok_{i}>" for i in range(n_new + len(have))) if t not in have][:n_new]
    return replace(m, embed=np.ascontiguousarray(np.vstack([m.embed, rows.astype(np.float32)])), tokens=[*m.tokens, *new_tokens])


def _lognormal(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """Positive per-dimension factors ``exp(N(0, spread))`` with a few 8x outliers, as trained LLM gains have."""
    g = np.exp(rng.normal(0.0, spread, n)).astype(np.float32)
    g[rng.choice(n, size=max(1, n // 64), replace=False)] *= np.float32(8.0)
    return g


def with_gains(m: SynthModel, spread: float = 1.0, seed: int = 4) -> SynthModel:
    """Plant heterogeneous norm gains (log-normal, a few outliers) feeding attention and the FFN of every layer."""
    rng = np.random.default_rng(seed)
    return replace(
        m,
        attn_norm=[_lognormal(rng, m.hidden, spread) for _ in range(m.n_layers)],
        ffn_norm=[_lognormal(rng, m.hidden, spread) for _ in range(m.n_layers)],
    )


def _rescale_inputs(m: SynthModel, factors: dict[str, list[np.ndarray]]) -> SynthModel:
    """``W := W @ diag(s)`` for the matrices reading each norm's output, ``gain := gain / s``: the same function."""
    ga, gf = m.gains("attn"), m.gains("ffn")
    sa, sf = factors["attn"], factors["ffn"]

    def cols(ws: list[np.ndarray], s: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray((w * f[None, :]).astype(np.float32)) for w, f in zip(ws, s, strict=True)]

    return replace(
        m,
        q=cols(m.q, sa),
        k=cols(m.k, sa),
        v=cols(m.v, sa),
        gate=cols(m.gate, sf),
        up=cols(m.up, sf),
        attn_norm=[(g / f).astype(np.float32) for g, f in zip(ga, sa, strict=True)],
        ffn_norm=[(g / f).astype(np.float32) for g, f in zip(gf, sf, strict=True)],
    )


def fold_gains(m: SynthModel) -> SynthModel:
    """Fold every norm gain into the next linear layers (``W := W @ diag(gain)``, ``gain := 1``), as QuaRot does first."""
    return _rescale_inputs(m, {"attn": m.gains("attn"), "ffn": m.gains("ffn")})


def awq_scale(m: SynthModel, spread: float = 1.0, seed: int = 5) -> SynthModel:
    """AWQ/SmoothQuant-style per-channel scales ``s``: ``W := W @ diag(s)``, compensated in the norm (``gain := gain / s``)."""
    rng = np.random.default_rng(seed)
    factors = {w: [_lognormal(rng, m.hidden, spread) for _ in range(m.n_layers)] for w in ("attn", "ffn")}
    return _rescale_inputs(m, factors)


def hf_tensors(m: SynthModel, norm_offset: float = 0.0) -> dict[str, np.ndarray]:
    """The model's tensors under Llama's Hugging Face names (norm weights stored as ``gain - norm_offset``)."""
    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": m.embed}
    ga, gf = m.gains("attn"), m.gains("ffn")
    for i in range(m.n_layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = m.q[i]
        out[p + "self_attn.k_proj.weight"] = m.k[i]
        out[p + "self_attn.v_proj.weight"] = m.v[i]
        out[p + "self_attn.o_proj.weight"] = m.o[i]
        out[p + "mlp.gate_proj.weight"] = m.gate[i]
        out[p + "mlp.up_proj.weight"] = m.up[i]
        out[p + "mlp.down_proj.weight"] = m.down[i]
        out[p + "input_layernorm.weight"] = ga[i] - np.float32(norm_offset)
        out[p + "post_attention_layernorm.weight"] = gf[i] - np.float32(norm_offset)
    out["model.norm.weight"] = np.ones(m.hidden, dtype=np.float32) - np.float32(norm_offset)
    return out


_HF_FAMILIES = {
    "llama": (["LlamaForCausalLM"], "llama"),
    "qwen2": (["Qwen2ForCausalLM"], "qwen2"),
    "gemma": (["GemmaForCausalLM"], "gemma"),
}


def write_tokenizer_json(tokens: list[str], path: Path) -> None:
    """A byte-level BPE ``tokenizer.json`` written by the ``tokenizers`` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


def write_hf(
    m: SynthModel,
    folder: Path,
    dtype: str = "float32",
    shards: int = 1,
    tokenizer: bool = True,
    extra_tensors: dict[str, np.ndarray] | None = None,
    family: str = "llama",
) -> Path:
    """Save as a Hugging Face directory: ``config.json``, ``tokenizer.json``, safetensors (sharded with an index when ``shards > 1``).

    ``family``: ``llama``; ``qwen2`` (adds Q/K/V biases); ``gemma`` (norm
    weights stored as ``gain - 1``, as GemmaRMSNorm reads ``1 + weight``).
    """
    import ml_dtypes
    from safetensors.numpy import save_file

    if family not in _HF_FAMILIES:
        raise ValueError(f"family must be one of {sorted(_HF_FAMILIES)}, got {family!r}")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = m.config()
    cfg["architectures"], cfg["model_type"] = _HF_FAMILIES[family]
    cfg["torch_dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer:
        write_tokenizer_json(m.tokens, folder / "tokenizer.json")
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    held = hf_tensors(m, norm_offset=1.0 if family == "gemma" else 0.0)
    if family == "qwen2":
        rng = np.random.default_rng(m.n_layers)
        for i in range(m.n_layers):
            for proj, w in (("q", m.q[i]), ("k", m.k[i]), ("v", m.v[i])):
                held[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = rng.standard_normal((w.shape[0],), dtype=np.float32)
    tensors = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in held.items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = np.ascontiguousarray(v)
    if shards <= 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = list(tensors)
    chunks = np.array_split(np.arange(len(names)), shards)
    weight_map = {}
    total = 0
    for s, idx in enumerate(chunks):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {names[i]: tensors[names[i]] for i in idx}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        for name in part:
            weight_map[name] = fname
            total += part[name].nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row reordering of Q/K for its rope kernel."""
    d_out, d_in = w.shape
    return w.reshape(n_head, 2, d_out // n_head // 2, d_in).swapaxes(1, 2).reshape(d_out, d_in)


def write_gguf(m: SynthModel, path: Path, qtype: str = "F32", arch: str = "llama") -> Path:
    """Save as a GGUF file (``qtype`` ``F32``, ``F16`` or any type ``gguf.quants.quantize`` supports).

    Norm weights hold the effective gains (llama.cpp's converter adds Gemma's
    1); ``arch`` ``llama`` rope-permutes Q/K rows as the Llama converter does.
    """
    import gguf
    from gguf.quants import quantize

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(m.n_layers)
    w.add_context_length(256)
    w.add_embedding_length(m.hidden)
    w.add_feed_forward_length(int(m.up[0].shape[0]))
    w.add_head_count(m.n_heads)
    w.add_head_count_kv(m.n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(m.tokens)
    w.add_token_types([1] * len(m.tokens))
    qt = gguf.GGMLQuantizationType[qtype]

    def add(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            data = quantize(arr, qt)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)

    add("token_embd.weight", m.embed)
    ga, gf = m.gains("attn"), m.gains("ffn")
    for i in range(m.n_layers):
        rope = arch == "llama"
        add(f"blk.{i}.attn_q.weight", _rope_permute(m.q[i], m.n_heads) if rope else m.q[i])
        add(f"blk.{i}.attn_k.weight", _rope_permute(m.k[i], m.n_kv_heads) if rope else m.k[i])
        add(f"blk.{i}.attn_v.weight", m.v[i])
        add(f"blk.{i}.attn_output.weight", m.o[i])
        add(f"blk.{i}.ffn_gate.weight", m.gate[i])
        add(f"blk.{i}.ffn_up.weight", m.up[i])
        add(f"blk.{i}.ffn_down.weight", m.down[i])
        add(f"blk.{i}.attn_norm.weight", ga[i])
        add(f"blk.{i}.ffn_norm.weight", gf[i])
    add("output_norm.weight", np.ones(m.hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
