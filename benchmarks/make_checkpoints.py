"""Write full-size synthetic Llama-shaped checkpoints for the benchmarks.

Each model is a Hugging Face directory: ``config.json``, ``tokenizer.json``
(byte-level BPE, 32000 tokens, the same for every model so that all rows are
shared), bf16 safetensors shards of about ``--shard-gb`` GB and
``model.safetensors.index.json``. Models are generated tensor by tensor and
written shard by shard, so a 13B model never exists in RAM.

Three kinds per shape:

* ``base``: seeded random weights with some structure, so that alignment and
  CKA behave more like on trained weights than on i.i.d. noise: per-hidden-
  dimension gains with a few outlier dimensions, per-head output gains, and a
  low-rank component shared by Q and K of a layer (a non-flat spectrum); the
  embedding has a low-rank token component on top of noise.
* ``derived``: the base with a function-preserving hidden-space transform (a
  permutation and sign flip of the hidden dimensions applied to every matrix
  that reads or writes the residual stream, the norm gains permuted, and the
  residual stream scaled by ``--scale``: embedding, ``o_proj`` and
  ``down_proj`` scaled) plus small drift (``--drift`` times each matrix's
  RMS; Gaussian on the embedding, Q and K, uniform on the tensors AWM does
  not read, which is faster to draw), as after a short fine-tune.
* ``independent``: the same recipe with another seed.

Every tensor is drawn from its own seed, so ``derived`` regenerates the base
tensor it transforms instead of reading the base files; kinds can be written
in parallel processes.

Usage::

    python benchmarks/make_checkpoints.py --shape tinyllama --kinds base,derived,independent
    python benchmarks/make_checkpoints.py --shape llama2-7b --out benchmarks/checkpoints
    python benchmarks/make_checkpoints.py --shape llama2-13b --kinds base,derived
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from awmtrace.synth import byte_level_vocab, write_tokenizer_json

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int = 32000

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def n_params(self) -> int:
        h, f, kv = self.hidden, self.ffn, self.n_kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * kv * h + 3 * h * f + 2 * h
        return 2 * self.vocab * h + self.n_layers * per_layer + h


SHAPES = {
    # TinyLlama/TinyLlama-1.1B: grouped-query attention, 4 KV heads.
    "tinyllama": Shape("tinyllama-1.1b", 2048, 22, 32, 4, 5632),
    "llama2-7b": Shape("llama2-7b", 4096, 32, 32, 32, 11008),
    "llama2-13b": Shape("llama2-13b", 5120, 40, 40, 40, 13824),
}
KINDS = ("base", "derived", "independent")
SEEDS = {"base": 1000, "derived": 1000, "independent": 2000}


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded by ``key`` (stable across runs and processes)."""
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean unit-variance uniform noise: 5x faster to draw than normal, used for the tensors AWM does not read."""
    x = rng.random(shape, dtype=np.float32)
    x -= np.float32(0.5)
    x *= np.float32(np.sqrt(12.0))
    return x


class BaseWeights:
    """The structured weights of one seed, tensor by tensor (float32)."""

    def __init__(self, shape: Shape, seed: int) -> None:
        self.s = shape
        self.seed = seed
        g = _rng(seed, "model")
        # Per-hidden-dimension gains: log-normal with a handful of outlier
        # dimensions, as trained LLMs have (massive activations / outlier features).
        self.hidden_gain = np.exp(g.normal(0.0, 0.4, shape.hidden)).astype(np.float32)
        outliers = g.choice(shape.hidden, size=max(2, shape.hidden // 512), replace=False)
        self.hidden_gain[outliers] *= np.float32(6.0)

    def embed(self) -> np.ndarray:
        s = self.s
        g = _rng(self.seed, "embed")
        e = _normal(g, (s.vocab, s.hidden))
        rank = 32
        e += _normal(g, (s.vocab, rank)) @ (_normal(g, (rank, s.hidden)) * np.float32(0.6 / np.sqrt(rank)))
        e *= self.hidden_gain[None, :] * np.float32(0.02)
        return e

    def lm_head(self) -> np.ndarray:
        s = self.s
        return _normal(_rng(self.seed, "lm_head"), (s.vocab, s.hidden)) * np.float32(0.02)

    def attention_pair(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Q ``(n_heads*head_dim, hidden)`` and K ``(n_kv_heads*head_dim, hidden)``."""
        s = self.s
        g = _rng(self.seed, "attn", layer)
        gain = self.hidden_gain * np.exp(g.normal(0.0, 0.2, s.hidden)).astype(np.float32)
        rank = 64
        shared = _normal(g, (rank, s.hidden)) * np.float32(1.0 / np.sqrt(rank))
        out = []
        for rows, heads in ((s.n_heads * s.head_dim, s.n_heads), (s.n_kv_heads * s.head_dim, s.n_kv_heads)):
            w = _normal(g, (rows, s.hidden))
            head_gain = np.exp(g.normal(0.0, 0.3, heads)).astype(np.float32)
            w *= np.repeat(head_gain, s.head_dim)[:, None]
            w += (_normal(g, (rows, rank)) * np.float32(1.5)) @ shared
            w *= gain[None, :] * np.float32(1.0 / np.sqrt(s.hidden))
            out.append(w)
        return out[0], out[1]

    def other(self, layer: int, kind: str) -> np.ndarray:
        s = self.s
        kv = s.n_kv_heads * s.head_dim
        shape = {
            "v": (kv, s.hidden),
            "o": (s.hidden, s.hidden),
            "gate": (s.ffn, s.hidden),
            "up": (s.ffn, s.hidden),
            "down": (s.hidden, s.ffn),
        }[kind]
        w = _uniform(_rng(self.seed, kind, layer), shape)
        w *= np.float32(1.0 / np.sqrt(shape[1]))
        return w


class Derived:
    """A function-preserving hidden-space transform of a base, plus drift."""

    def __init__(self, base: BaseWeights, drift: float, scale: float, seed: int = 7) -> None:
        self.base = base
        self.drift = drift
        self.scale = np.float32(scale)
        g = _rng(seed, "transform", base.s.hidden)
        # New hidden dim j is old dim perm[j] times signs[j].
        self.perm = g.permutation(base.s.hidden)
        self.signs = g.choice(np.array([-1.0, 1.0], dtype=np.float32), size=base.s.hidden)
        self.seed = seed

    def _noise(self, w: np.ndarray, *key: object, gaussian: bool = True) -> np.ndarray:
        if self.drift > 0:
            rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float32), dtype=np.float64)))
            n = (_normal if gaussian else _uniform)(_rng(self.seed, "drift", *key), w.shape)
            n *= np.float32(self.drift * rms)
            w += n
        return w

    def reads(self, w: np.ndarray) -> np.ndarray:
        """A matrix that reads the residual stream: ``(d_out, hidden)``, columns moved."""
        out = np.take(w, self.perm, axis=1)  # several times faster than w[:, perm]
        out *= self.signs[None, :]
        return out

    def writes(self, w: np.ndarray) -> np.ndarray:
        """A matrix that writes the residual stream: ``(hidden, d_in)``, rows moved and scaled."""
        out = np.take(w, self.perm, axis=0)
        out *= (self.signs * self.scale)[:, None]
        return out


def _tensors(shape: Shape, kind: str, drift: float, scale: float, lean: bool = False):  # generator of (name, array)
    """``(name, float32 array)`` in Hugging Face Llama order.

    ``lean``: only what AWM reads, with the same values (every tensor has its own seed).
    """
    base = BaseWeights(shape, SEEDS[kind])
    d = Derived(base, drift, scale) if kind == "derived" else None
    ones = np.ones(shape.hidden, dtype=np.float32)
    norm = ones[d.perm] if d is not None else ones

    e = base.embed()
    if d is not None:
        e = d._noise(d.reads(e) * d.scale, "embed")
    yield "model.embed_tokens.weight", e
    del e
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        q, k = base.attention_pair(i)
        items = [("self_attn.q_proj", q, "reads"), ("self_attn.k_proj", k, "reads")]
        for name, kind_ in (
            ()
            if lean
            else (
                ("self_attn.v_proj", "v"),
                ("self_attn.o_proj", "o"),
                ("mlp.gate_proj", "gate"),
                ("mlp.up_proj", "up"),
                ("mlp.down_proj", "down"),
            )
        ):
            items.append((name, base.other(i, kind_), "writes" if kind_ in ("o", "down") else "reads"))
        del q, k
        for name, w, side in items:
            if d is not None:
                w = d.reads(w) if side == "reads" else d.writes(w)
                # Gaussian drift where AWM looks (Q, K); cheaper uniform drift elsewhere.
                w = d._noise(w, name, i, gaussian=name in ("self_attn.q_proj", "self_attn.k_proj"))
            yield p + name + ".weight", w
        items.clear()
        yield p + "input_layernorm.weight", norm
        if lean:
            continue
        yield p + "post_attention_layernorm.weight", norm
    if lean:
        return
    yield "model.norm.weight", norm
    head = base.lm_head()
    if d is not None:
        head = d._noise(d.reads(head), "lm_head", gaussian=False)
    yield "lm_head.weight", head


def _config(shape: Shape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def write_model(shape: Shape, kind: str, folder: Path, shard_bytes: int, drift: float, scale: float, lean: bool = False) -> dict:
    """Write one model; returns a summary (bytes, shards, seconds)."""
    started = time.perf_counter()
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(_config(shape), indent=2))
    write_tokenizer_json(byte_level_vocab(shape.vocab), tmp / "tokenizer.json")
    pending: dict[str, np.ndarray] = {}
    pending_bytes = 0
    weight_map: dict[str, str] = {}
    written: list[str] = []
    total = 0

    def flush() -> None:
        nonlocal pending_bytes
        fname = f"model-{len(written) + 1:05d}-of-{{n}}.safetensors"
        save_file(pending, str(tmp / fname.replace("{n}", "XXXXX")), metadata={"format": "pt"})
        written.append(fname)
        for name in pending:
            weight_map[name] = fname
        pending.clear()
        pending_bytes = 0

    for name, w in _tensors(shape, kind, drift, scale, lean):
        arr = np.ascontiguousarray(w.astype(ml_dtypes.bfloat16))
        del w
        if pending and pending_bytes + arr.nbytes > shard_bytes:
            flush()
        pending[name] = arr
        pending_bytes += arr.nbytes
        total += arr.nbytes
    if pending:
        flush()
    n = len(written)
    final = {f: f.replace("{n}", f"{n:05d}") for f in written}
    for f, real in final.items():
        (tmp / f.replace("{n}", "XXXXX")).rename(tmp / real)
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return {"model": str(folder), "bytes": total, "shards": n, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--kinds", default="base,derived,independent", help="comma-separated subset of base,derived,independent")
    ap.add_argument("--out", type=Path, default=HERE / "checkpoints")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="approximate shard size in GB (HF uses ~5)")
    ap.add_argument("--drift", type=float, default=0.05, help="derived: Gaussian drift, relative to each matrix's RMS")
    ap.add_argument("--scale", type=float, default=2.0, help="derived: residual-stream scale")
    ap.add_argument("--force", action="store_true", help="rewrite models that already exist")
    ap.add_argument(
        "--lean",
        action="store_true",
        help="write only the tensors AWM reads (embedding, Q, K, attention norm): same values, a fraction of the size",
    )
    args = ap.parse_args(argv)
    shape = SHAPES[args.shape]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; choose from {KINDS}")
    need = shape.n_params() * 2 * len(kinds)
    free = shutil.disk_usage(args.out if args.out.exists() else args.out.parent).free
    if need > free - 2e9:
        print(f"not enough disk: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free under {args.out}", file=sys.stderr)
        return 2
    for kind in kinds:
        folder = args.out / f"{shape.name}-{kind}"
        if folder.exists() and (folder / "model.safetensors.index.json").exists() and not args.force:
            print(json.dumps({"model": str(folder), "skipped": "exists (use --force)"}))
            continue
        print(json.dumps(write_model(shape, kind, folder, int(args.shard_gb * 1e9), args.drift, args.scale, args.lean)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
