"""Robustness audit of one model: transformed copies of its tensors, each scored against the original.

:func:`stress` opens the model once, reads what AWM reads (the embedding,
each layer's Q/K and the gain of the norm feeding them) into float32
:class:`~awmtrace.transforms.Weights`, and for each transform builds a copy in
memory (:class:`~awmtrace.io.memory.MemorySource`, never a file), scores it
against the checkpoint with :func:`pipeline.compare_models`, and, for the
function-preserving ones, proves on layer 0 that the network computes the
same thing before and after (:func:`function_check`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace import __version__
from awmtrace.arch.resolve import read_attention
from awmtrace.errors import UnsupportedArchitecture, UsageError
from awmtrace.io.memory import MemorySource
from awmtrace.io.vocab import Vocab
from awmtrace.pipeline import MIN_SHARED_TOKENS, Model, Progress, compare_models, open_model
from awmtrace.stress_check import CHECK_TOLERANCE, CheckInputs, CheckResult, attention_norm_kind, check_inputs, function_check
from awmtrace.transforms import TRANSFORMS, LayerWeights, Transform, Weights
from awmtrace.types import LayerRefs, ModelView, NullModel, PairResult, TensorRef

__all__ = [
    "CHECK_TOLERANCE",
    "CheckInputs",
    "CheckResult",
    "check_inputs",
    "copy_model",
    "StressReport",
    "StressResult",
    "TRANSFORMS",
    "attention_norm_gain",
    "attention_norm_kind",
    "function_check",
    "load_weights",
    "parse_transforms",
    "stress",
    "stress_model",
]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def parse_transforms(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Transform names from ``"a,b"`` (or a list); ``None``/``"all"``: every one. Unknown names raise :class:`UsageError`."""
    if spec is None:
        return tuple(TRANSFORMS)
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["all"] or not items:
        return tuple(TRANSFORMS)
    bad = [s for s in items if s not in TRANSFORMS]
    if bad:
        raise UsageError(f"unknown transform(s) {', '.join(bad)}; choose from {', '.join(TRANSFORMS)} (or 'all')")
    return tuple(dict.fromkeys(items))


def attention_norm_gain(model: Model, index: int) -> np.ndarray | None:
    """Effective gain ``(hidden,)`` of the norm feeding layer ``index``'s attention, or ``None`` when the checkpoint has none.

    Rewire point for the lead: once ``LayerRefs.attn_norm`` and
    ``arch.resolve.read_norm`` exist (branch ``rot``) they decide; until then
    the Llama/Qwen name ``model.layers.{i}.input_layernorm.weight`` or GGUF's
    ``blk.{i}.attn_norm.weight`` is read when present (no Gemma ``1 + w`` offset).
    """
    from awmtrace.arch import resolve

    ref = getattr(model.view.layers[index], "attn_norm", None)
    read_norm = getattr(resolve, "read_norm", None)
    if ref is not None and read_norm is not None:
        return np.asarray(read_norm(model.source, model.view, ref), dtype=np.float32)
    names = set(model.source.names())
    for name in (f"model.layers.{index}.input_layernorm.weight", f"blk.{index}.attn_norm.weight"):
        if name in names:
            gamma = model.source.read(name).reshape(-1)
            if gamma.shape != (model.view.hidden_size,):
                return None
            return gamma
    return None


def _heads(model: Model, q_rows: int, k_rows: int) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` that fit layer 0's Q ``(q_rows, hidden)`` and K ``(k_rows, hidden)``.

    The head layout decides which Q and K rows rotate together and which KV
    head each Q head reads, so it must fit the shapes exactly.
    """
    view = model.view
    nh = view.n_heads or 1
    hd = view.head_dim if view.head_dim and q_rows == nh * view.head_dim else q_rows // nh
    nkv = k_rows // hd if hd else 0
    if hd <= 0 or nh * hd != q_rows or nkv * hd != k_rows or nkv == 0 or nh % nkv:
        raise UnsupportedArchitecture(
            f"{model.spec}: layer 0 has Q with {q_rows} rows and K with {k_rows} rows, which do not fit {view.n_heads} heads "
            f"({view.n_kv_heads} KV heads) of a common head size; awm stress needs the head layout to transform heads"
        )
    return nh, nkv, hd


def load_weights(model: Model, progress: Progress = _no_progress) -> Weights:
    """The float32 tensors AWM reads from ``model``: embedding, per-layer Q/K and attention-norm gains."""
    view = model.view
    embed = model.source.read(view.embedding.name)
    if view.embedding.transposed:
        embed = np.ascontiguousarray(embed.T)
    layers = []
    for i, refs in enumerate(view.layers):
        q, k = read_attention(model.source, view, refs)
        layers.append(LayerWeights(q=q, k=k, gamma=attention_norm_gain(model, i)))
        model.source.release()
        progress("reading the model", i + 1, len(view.layers))
    rope = "interleaved" if view.format == "gguf" else "half"
    nh, nkv, hd = _heads(model, layers[0].q.shape[0], layers[0].k.shape[0])
    return Weights(embed=embed, layers=tuple(layers), n_heads=nh, n_kv_heads=nkv, head_dim=hd, rope=rope)


def _id_vocab(rows: int) -> Vocab:
    """A vocabulary that matches tokens by id, for checkpoints without a readable tokenizer (every copy keeps token ids)."""
    return Vocab(keys={f"<id {i}>": i for i in range(rows)}, kind="plain", source="token ids (no tokenizer found)", size=rows)


def _extend_vocab(vocab: Vocab, first_new: int, n_new: int) -> Vocab:
    if n_new <= 0:
        return vocab
    keys: dict[Any, int] = dict(vocab.keys)
    keys.update({f"<awm-stress-new {i}>": first_new + i for i in range(n_new)})
    return replace(vocab, keys=keys, size=max(vocab.size, first_new + n_new))


_HAS_NORM_REF = "attn_norm" in {f.name for f in fields(LayerRefs)}
_HAS_NORM_OFFSET = "norm_offset" in {f.name for f in fields(ModelView)}


def copy_model(original: Model, w: Weights, name: str) -> Model:
    """``w`` as an opened model: a :class:`MemorySource` with GGUF-style names and a view of the original's family.

    Norm gains are stored as effective gains (``norm_offset`` 0) and referenced
    from ``LayerRefs.attn_norm`` when the types have it, so the pipeline folds
    them exactly as it folds the original's.
    """
    how = f"in memory: {name} of {original.spec}"
    tensors: dict[str, np.ndarray] = {"token_embd.weight": w.embed}
    refs = []
    for i, layer in enumerate(w.layers):
        tensors[f"blk.{i}.attn_q.weight"], tensors[f"blk.{i}.attn_k.weight"] = layer.q, layer.k
        extra: dict[str, Any] = {}
        if layer.gamma is not None:
            tensors[f"blk.{i}.attn_norm.weight"] = layer.gamma
            if _HAS_NORM_REF:
                extra["attn_norm"] = TensorRef(f"blk.{i}.attn_norm.weight", f"blk.{i}.attn_norm", how)
        q_ref = TensorRef(f"blk.{i}.attn_q.weight", f"blk.{i}.attn_q", how)
        k_ref = TensorRef(f"blk.{i}.attn_k.weight", f"blk.{i}.attn_k", how)
        refs.append(LayerRefs(index=i, q=q_ref, k=k_ref, **extra))
    source = MemorySource(tensors, label=f"{Path(original.view.path).name}[{name}]")
    changes: dict[str, Any] = {
        "path": str(source.path),
        "format": "memory",
        "hidden_size": w.hidden,
        "n_layers": len(w.layers),
        "n_heads": w.n_heads,
        "n_kv_heads": w.n_kv_heads,
        "head_dim": w.head_dim,
        "vocab_size": int(w.embed.shape[0]),
        "embedding": TensorRef("token_embd.weight", "token_embd", how),
        "layers": tuple(refs),
        "notes": tuple(w.notes),
    }
    if _HAS_NORM_OFFSET:
        changes["norm_offset"] = 0.0
    view = replace(original.view, **changes)
    vocab = original.vocab or _id_vocab(original.view.vocab_size)
    vocab = _extend_vocab(vocab, int(w.embed.shape[0]) - w.extra_tokens, w.extra_tokens)
    return Model(spec=f"{original.spec} [{name}]", source=source, view=view, vocab=vocab)


@dataclass(frozen=True)
class StressResult:
    """One transform: whether it preserves the function (and the check that proves it), its score against the original."""

    name: str
    description: str
    function_preserving: bool
    check: CheckResult | None
    pair: PairResult
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def score(self) -> float:
        return self.pair.score

    @property
    def z(self) -> float:
        return self.pair.z

    @property
    def verdict(self) -> str:
        return self.pair.verdict.label

    def to_dict(self) -> dict[str, Any]:
        b = self.pair.b
        return {
            "name": self.name,
            "description": self.description,
            "function_preserving": self.function_preserving,
            "check_max_rel_err": None if self.check is None else self.check.max_rel_err,
            "check_passed": None if self.check is None else self.check.passed,
            "check": None if self.check is None else self.check.to_dict(),
            "score": self.pair.score,
            "score_q": self.pair.score_q,
            "score_k": self.pair.score_k,
            "z": self.pair.z,
            "p_value": self.pair.p_value,
            "verdict": self.verdict,
            "seconds": self.seconds,
            "copy": {k: b[k] for k in ("hidden_size", "n_layers", "n_heads", "n_kv_heads", "vocab_size")},
            "alignment": self.pair.alignment,
            "layer_matching": {k: v for k, v in self.pair.layer_matching.items() if k != "score_matrix"},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class StressReport:
    """Every transform's result for one model, and how the function check was run."""

    model: dict[str, Any]
    seed: int
    check: CheckInputs
    results: tuple[StressResult, ...]
    null: dict[str, Any]
    elapsed_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        from awmtrace.report.schema import SCHEMA_VERSION

        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "awmtrace", "version": __version__},
            "model": self.model,
            "seed": self.seed,
            "check": self.check.to_dict(),
            "null": {
                "name": self.null.get("name"),
                "mean": self.null.get("mean"),
                "std": self.null.get("std"),
                "thresholds": dict(self.results[0].pair.verdict.thresholds) if self.results else {},
            },
            "transforms": [r.to_dict() for r in self.results],
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
        }


def _run_one(original: Model, base: Weights, inputs: CheckInputs, transform: Transform, seed: int, options: dict[str, Any]) -> StressResult:
    started = time.perf_counter()
    notes: list[str] = []
    preserving = transform.function_preserving
    if preserving and transform.rms_only and inputs.norm == "layer":
        preserving = False
        notes.append("preserves the function only behind RMSNorm; this model's LayerNorm subtracts the mean, which the transform moves")
    check = function_check(inputs, transform, seed) if preserving else None
    w = transform.apply(base, np.random.default_rng(seed))
    notes.extend(n for n in w.notes if n not in notes)
    with copy_model(original, w, transform.name) as copy:
        pair = compare_models(original, copy, **options)
    return StressResult(transform.name, transform.description, preserving, check, pair, time.perf_counter() - started, tuple(notes))


def stress_model(
    model: Model,
    transforms: str | Iterable[str] | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    null: NullModel | str | Path | None = None,
    min_shared_tokens: int = MIN_SHARED_TOKENS,
    progress: Progress | None = None,
) -> StressReport:
    """Score transformed in-memory copies of ``model`` against it (see the module docstring).

    ``transforms``: names of :data:`TRANSFORMS` (``"a,b"`` or a list; ``None``:
    all). ``seed`` draws every random transform and the check tokens;
    ``device``, ``null`` and ``min_shared_tokens`` are passed to :func:`compare_models`.
    """
    from awmtrace.nulls import load_null

    names = parse_transforms(transforms)
    progress = progress or _no_progress
    started = time.perf_counter()
    null_model = null if isinstance(null, NullModel) else load_null(null)
    notes: list[str] = []
    original = model
    if model.vocab is None:
        original = Model(spec=model.spec, source=model.source, view=model.view, vocab=_id_vocab(model.view.vocab_size))
        notes.append(f"no readable tokenizer ({model.vocab_error or 'none found'}): tokens matched by id")
    base = load_weights(model, progress)
    inputs = check_inputs(model, base, seed)
    options = {"device": device, "null": null_model, "min_shared_tokens": min_shared_tokens}
    results = []
    for i, name in enumerate(names):
        progress("stress transforms", i, len(names))
        results.append(_run_one(original, base, inputs, TRANSFORMS[name], seed, options))
    progress("stress transforms", len(names), len(names))
    return StressReport(
        model=model.summary(),
        seed=seed,
        check=inputs,
        results=tuple(results),
        null=null_model.to_dict(),
        elapsed_s=time.perf_counter() - started,
        notes=tuple(notes),
    )


def stress(spec: str | Path, transforms: str | Iterable[str] | None = None, **options: Any) -> StressReport:
    """Open ``spec`` (directory, file or Hub id) and run :func:`stress_model` on it; nothing is written anywhere."""
    names = parse_transforms(transforms)  # refuse bad names before opening (or downloading) anything
    with open_model(spec, options.get("progress")) as model:
        return stress_model(model, names, **options)
