"""The function check of ``awm stress``: layer 0 run before and after a transform, in float64.

For a few tokens (embedding rows), the block computes norm -> q, k, v ->
RoPE -> causal attention with the model's head layout (grouped-query aware)
-> O, and :func:`function_check` compares the projections, the attention
logits and the residual update before and after a transform. V and O of
layer 0 come from the checkpoint (gguf's name map, or the V block of a fused
QKV); where they cannot be found, random ones of the right shapes are used
and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from awmtrace.arch.names import canonical_role, gguf_role
from awmtrace.arch.resolve import load_table
from awmtrace.errors import NumericalError
from awmtrace.pipeline import Model
from awmtrace.transforms import Transform, Weights, rope_pairs
from awmtrace.types import ModelView

__all__ = [
    "CHECK_TOKENS",
    "CHECK_TOLERANCE",
    "CheckInputs",
    "CheckResult",
    "attention_norm_kind",
    "block_outputs",
    "check_inputs",
    "function_check",
]

#: Worst relative error up to which a function check passes (float32 weights, float64 arithmetic).
CHECK_TOLERANCE = 1e-4
#: Token rows run through layer 0 by the function check.
CHECK_TOKENS = 8
#: Families whose blocks read the stream through LayerNorm (mean subtraction), used until views carry ``norm_kind``.
_LAYER_NORM_FAMILIES = frozenset({"gpt2", "jais", "bert", "bloom", "falcon", "gpt_neox", "mpt", "olmo", "olmo_v1", "chatglm_v1"})


def attention_norm_kind(view: ModelView) -> str:
    """``"rms"`` or ``"layer"``: the norm in front of attention (``view.norm_kind`` once branch ``rot`` adds it)."""
    kind = getattr(view, "norm_kind", None)
    if kind in ("rms", "layer"):
        return str(kind)
    return "layer" if view.family in _LAYER_NORM_FAMILIES else "rms"


def _split_v(w: np.ndarray, layout: str | None, nh: int, nkv: int, hd: int) -> np.ndarray | None:
    """The V block of a fused QKV weight ``((nh + 2 nkv) hd, hidden)`` in the layouts of :mod:`awmtrace.arch.qkv`."""
    if w.shape[0] != (nh + 2 * nkv) * hd:
        return None
    d_in = w.shape[1]
    if layout == "contiguous":
        return w[(nh + nkv) * hd :]
    if layout == "per_head" and nh == nkv:
        return w.reshape(nh, 3, hd, d_in)[:, 2].reshape(-1, d_in)
    if layout == "kv_group" and nh % nkv == 0:
        return w.reshape(nkv, nh // nkv + 2, hd, d_in)[:, nh // nkv + 1].reshape(-1, d_in)
    return None


def _layer0_role(name: str, model: Model) -> str | None:
    """``attn_v``/``attn_output`` when ``name`` is that tensor of layer 0 (GGUF names, or HF names through gguf's name map)."""
    if model.view.format == "gguf":
        hit = gguf_role(name)
        return hit[0] if hit is not None and hit[1] == 0 else None
    table = load_table()
    fam = table.families.get(model.view.family)
    if fam is None:
        return None
    rewrites = [*fam.prefix_rewrites, *((str(a), str(b)) for a, b in table.defaults.get("prefix_rewrites", []))]
    for cand in [name, *(dst + name[len(src) :] for src, dst in rewrites if name.startswith(src))]:
        role = canonical_role(cand, fam.gguf_arch, model.view.n_layers)
        if role is not None:
            return role[0] if role[1] == 0 else None
    return None


def _layer0_v_o(model: Model, nh: int, nkv: int, hd: int) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Layer 0's V ``(nkv hd, hidden)`` and O ``(hidden, nh hd)`` from the checkpoint (``None`` when not found) and where each came from."""
    view, how = model.view, []
    found: dict[str, np.ndarray] = {}
    first = view.layers[0]
    fam = load_table().families.get(view.family)
    transposed_roles = fam.hf_transposed if fam is not None and view.format != "gguf" else frozenset()
    if first.q.part is not None:
        fused = model.source.read(first.q.name)
        v = _split_v(fused.T if first.q.transposed else fused, first.q.layout, nh, nkv, hd)
        if v is not None:
            found["attn_v"] = np.ascontiguousarray(v)
            how.append(f"V: {first.q.name} ({first.q.layout} fused QKV)")
    for name in model.source.names():
        if not name.endswith(".weight") or ".0." not in f".{name}":
            continue
        role = _layer0_role(name, model)
        if role in ("attn_v", "attn_output") and role not in found:
            a = model.source.read(name)
            found[role] = np.ascontiguousarray(a.T if role in transposed_roles else a)
            how.append(f"{'V' if role == 'attn_v' else 'O'}: {name}")
    hidden = view.hidden_size
    out: list[np.ndarray | None] = []
    for role, label, shape in (("attn_v", "V", (nkv * hd, hidden)), ("attn_output", "O", (hidden, nh * hd))):
        got = found.get(role)
        if got is not None and got.shape != shape:
            how.append(f"{label} has shape {got.shape}, expected {shape}")
            got = None
        out.append(got)
    return out[0], out[1], how


@dataclass(frozen=True)
class CheckInputs:
    """Layer 0 as the function check runs it: ``weights.embed`` holds the check tokens' rows ``(n, hidden)``."""

    weights: Weights
    norm: str
    rope_theta: float
    token_ids: tuple[int, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": CHECK_TOLERANCE,
            "layer": 0,
            "token_ids": list(self.token_ids),
            "norm": self.norm,
            "rope_layout": self.weights.rope,
            "rope_theta": self.rope_theta,
            "notes": list(self.notes),
        }


def _rope_theta(model: Model) -> float:
    cfg = model.source.config.get("rope_theta")
    arch = model.source.metadata.get("general.architecture", "")
    meta = model.source.metadata.get(f"{arch}.rope.freq_base")
    value = cfg if isinstance(cfg, int | float) else meta
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 10000.0


def check_inputs(model: Model, base: Weights, seed: int = 0) -> CheckInputs:
    """Pick :data:`CHECK_TOKENS` non-zero embedding rows and layer 0 with its V/O (random ones of the right shapes when absent)."""
    rng = np.random.default_rng(seed)
    rows = base.embed.shape[0]
    candidates = rng.permutation(rows)[: max(4 * CHECK_TOKENS, 64)]
    ids = [int(i) for i in candidates if np.any(base.embed[i] != 0)][:CHECK_TOKENS]
    if len(ids) < 2:
        raise NumericalError(f"{model.spec}: the embedding rows sampled for the function check are all zero; the embedding looks empty")
    nh, nkv, hd = base.n_heads, base.n_kv_heads, base.head_dim
    v, o, how = _layer0_v_o(model, nh, nkv, hd)
    notes = list(how)
    if v is None or o is None:
        scale = 1.0 / np.sqrt(base.hidden)
        v = v if v is not None else (rng.standard_normal((nkv * hd, base.hidden)) * scale).astype(np.float32)
        o = o if o is not None else (rng.standard_normal((base.hidden, nh * hd)) / np.sqrt(nh * hd)).astype(np.float32)
        notes.append(
            "layer 0 V and/or O not found in the checkpoint: random matrices of the right shapes were transformed and checked instead"
        )
    layer = replace(base.layers[0], v=v, o=o)
    w = replace(base, embed=np.ascontiguousarray(base.embed[ids]), layers=(layer,), notes=())
    return CheckInputs(
        weights=w, norm=attention_norm_kind(model.view), rope_theta=_rope_theta(model), token_ids=tuple(ids), notes=tuple(notes)
    )


def _rope(x: np.ndarray, layout: str, theta: float) -> np.ndarray:
    """Rotary embedding of ``x`` ``(n, heads, head_dim)`` at positions ``0..n-1``."""
    n, _, hd = x.shape
    a, b = rope_pairs(hd, layout)
    angle = np.arange(n)[:, None] * theta ** (-2.0 * np.arange(a.size) / hd)[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.copy()
    out[..., a] = x[..., a] * cos - x[..., b] * sin
    out[..., b] = x[..., a] * sin + x[..., b] * cos
    return out


def block_outputs(w: Weights, n: int, norm: str, theta: float) -> dict[str, np.ndarray]:
    """Layer 0 on the first ``n`` rows of ``w.embed``, in float64: norm -> q, k, v -> RoPE -> causal GQA attention -> O.

    Returns ``q`` ``(n, nh hd)``, ``k``/``v`` ``(n, nkv hd)`` (before RoPE), ``logits``
    ``(nh n, n)`` (after RoPE, before the mask) and ``update`` ``(n, hidden)``.
    Norm ``eps`` is taken as 0 (it breaks exact scale invariance by ``O(eps / mean(x^2))``).
    """
    layer = w.layers[0]
    assert layer.v is not None and layer.o is not None
    x = w.embed[:n].astype(np.float64)
    if norm == "layer":
        x = x - x.mean(axis=1, keepdims=True)
    h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))
    if layer.gamma is not None:
        h = h * layer.gamma.astype(np.float64)[None, :]
    q, k, v = (h @ m.astype(np.float64).T for m in (layer.q, layer.k, layer.v))
    nh, nkv, hd = w.n_heads, w.n_kv_heads, w.head_dim
    qr = _rope(q.reshape(n, nh, hd), w.rope, theta)
    kr = _rope(k.reshape(n, nkv, hd), w.rope, theta)
    kv_of = np.arange(nh) // (nh // nkv)  # q head h reads KV head h // group (HF repeat_kv)
    logits = np.einsum("ihd,jhd->hij", qr, kr[:, kv_of]) / np.sqrt(hd)
    masked = np.where(np.tril(np.ones((n, n), dtype=bool))[None], logits, -np.inf)
    att = np.exp(masked - masked.max(axis=2, keepdims=True))
    att /= att.sum(axis=2, keepdims=True)
    out = np.einsum("hij,jhd->ihd", att, v.reshape(n, nkv, hd)[:, kv_of]).reshape(n, nh * hd)
    return {"q": q, "k": k, "v": v, "logits": logits.reshape(nh * n, n), "update": out @ layer.o.astype(np.float64).T}


def _worst_row_error(new: np.ndarray, ref: np.ndarray) -> float:
    """Largest ``||new_i - ref_i|| / ||ref_i||`` over rows (``inf`` when shapes differ)."""
    if new.shape != ref.shape:
        return float("inf")
    den = np.linalg.norm(ref, axis=1)
    num = np.linalg.norm(new - ref, axis=1)
    return float(np.max(num / np.maximum(den, np.finfo(np.float64).tiny)))


@dataclass(frozen=True)
class CheckResult:
    """Worst relative error of each compared quantity on layer 0, and whether all stay within :data:`CHECK_TOLERANCE`."""

    max_rel_err: float
    errors: dict[str, float]
    passed: bool
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"max_rel_err": self.max_rel_err, "errors": dict(self.errors), "passed": self.passed, "notes": list(self.notes)}


def function_check(inputs: CheckInputs, transform: Transform, seed: int = 0) -> CheckResult:
    """Run layer 0 before and after ``transform`` (drawn with ``seed``, as the scored copy is) and compare.

    The original residual update is appended to the embedding rows before the
    transform, so it comes out mapped by the transform's own residual map
    (``E -> E M`` is the map of the stream); ``update`` compares against that.
    """
    w = inputs.weights
    n = w.embed.shape[0]
    before = block_outputs(w, n, inputs.norm, inputs.rope_theta)
    stacked = replace(w, embed=np.vstack([w.embed, before["update"].astype(np.float32)]))
    out = transform.apply(stacked, np.random.default_rng(seed))
    after = block_outputs(replace(out, embed=out.embed[:n]), n, inputs.norm, inputs.rope_theta)
    expected = dict(before, update=out.embed[n : 2 * n].astype(np.float64))
    errors = {key: _worst_row_error(after[key], expected[key]) for key in transform.compare}
    worst = max(errors.values())
    return CheckResult(max_rel_err=worst, errors=errors, passed=bool(worst <= CHECK_TOLERANCE), notes=out.notes)
