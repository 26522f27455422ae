"""Transforms of a model's weights for the robustness audit (``awm stress``): pure numpy, no I/O.

A transform maps :class:`Weights` (the embedding, each layer's Q/K and the
gain of the norm that feeds them; V and O of layer 0 when the function check
asks) to new :class:`Weights`. Function-preserving ones change the weights
but not what the network computes; :mod:`awmtrace.stress` proves that
numerically on layer 0. Linear maps are stored ``(d_out, d_in)``; the
residual stream is a row vector ``x`` of width ``hidden``, so a layer reads
``x @ W.T``.

Residual-stream transforms act on every tensor that reads or writes it. For
a map ``x -> x M`` with ``M`` orthogonal (or a signed permutation), a reader
computes ``norm(x M) W'^T = norm(x) M W'^T``, equal to ``norm(x) W^T`` when
``W' = W M``; a writer's output ``u O'^T`` must become ``u O^T M``, so
``O' = M^T O``; the embedding becomes ``E M``. ``norm(x M) = norm(x) M`` holds
for RMSNorm with unit gain only, hence the gain fold first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from awmtrace.quantize import round_trip

__all__ = [
    "LayerWeights",
    "Weights",
    "Transform",
    "TRANSFORMS",
    "hadamard_matrix",
    "haar_orthogonal",
    "fold_gains",
    "rotate_residual",
    "rotate_qk_heads",
    "rope_pairs",
]


@dataclass(frozen=True)
class LayerWeights:
    """One block as far as the audit needs it.

    ``q``: ``(n_heads*head_dim, hidden)``, ``k``: ``(n_kv_heads*head_dim, hidden)``,
    ``gamma``: ``(hidden,)`` effective gain of the norm feeding attention (``None``:
    the checkpoint has none), ``v``: ``(n_kv_heads*head_dim, hidden)`` and
    ``o``: ``(hidden, n_heads*head_dim)`` only for the function check.
    """

    q: np.ndarray
    k: np.ndarray
    gamma: np.ndarray | None
    v: np.ndarray | None = None
    o: np.ndarray | None = None


@dataclass(frozen=True)
class Weights:
    """Embedding ``(rows, hidden)``, layers, head layout; ``rope`` is the rotary pair layout (``half`` | ``interleaved``)."""

    embed: np.ndarray
    layers: tuple[LayerWeights, ...]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope: str = "half"
    extra_tokens: int = 0  # rows appended to the vocabulary
    notes: tuple[str, ...] = ()

    @property
    def hidden(self) -> int:
        return int(self.embed.shape[1])


Apply = Callable[[Weights, np.random.Generator], Weights]


@dataclass(frozen=True)
class Transform:
    """A named transform. ``rms_only``: preserves the function only behind RMSNorm (a LayerNorm's mean subtraction breaks it).

    ``compare`` names what the function check compares before/after (``q``,
    ``k``, ``v``: projections; ``logits``: per-head attention logits after
    RoPE; ``update``: the attention block's residual update, mapped through the
    transform's own residual map).
    """

    name: str
    description: str
    function_preserving: bool
    apply: Apply
    rms_only: bool = False
    compare: tuple[str, ...] = ("q", "k", "v", "logits", "update")


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _readers(layer: LayerWeights, fn: Callable[[np.ndarray], np.ndarray]) -> LayerWeights:
    """Apply ``fn`` to every matrix reading the (normed) stream: Q, K, V."""
    return replace(layer, q=_f32(fn(layer.q)), k=_f32(fn(layer.k)), v=None if layer.v is None else _f32(fn(layer.v)))


def _scale_inputs(layer: LayerWeights, s: np.ndarray) -> LayerWeights:
    """``W -> W diag(s)`` for Q, K, V; ``s``: ``(hidden,)``."""
    return _readers(layer, lambda a: a * s[None, :])


def _note(w: Weights, note: str) -> Weights:
    return replace(w, notes=(*w.notes, note))


def permute_signs(w: Weights, rng: np.random.Generator) -> Weights:
    """Hidden dim ``j`` of the copy is dim ``perm[j]`` of the original times ``signs[j]`` (``M`` a signed permutation)."""
    perm = rng.permutation(w.hidden)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=w.hidden)
    layers = []
    for layer in w.layers:
        new = _readers(layer, lambda a: a[:, perm] * signs[None, :])
        gamma = None if layer.gamma is None else _f32(layer.gamma[perm])
        o = None if layer.o is None else _f32(layer.o[perm] * signs[:, None])
        layers.append(replace(new, gamma=gamma, o=o))
    return replace(w, embed=_f32(w.embed[:, perm] * signs[None, :]), layers=tuple(layers))


def global_scale(w: Weights, rng: np.random.Generator, factor: float = 4.0) -> Weights:
    """The residual stream times ``factor``: embedding and every writer (O) scaled; the norms remove it again."""
    layers = tuple(replace(layer, o=None if layer.o is None else _f32(layer.o * np.float32(factor))) for layer in w.layers)
    return replace(w, embed=_f32(w.embed * np.float32(factor)), layers=layers)


def fold_gains(w: Weights, rng: np.random.Generator | None = None) -> Weights:
    """``W -> W diag(gamma)`` for Q, K, V, and the gain set to 1 (what QuaRot/SpinQuant do first)."""
    layers = []
    for layer in w.layers:
        if layer.gamma is None:
            layers.append(layer)
            continue
        layers.append(replace(_scale_inputs(layer, layer.gamma), gamma=np.ones_like(layer.gamma)))
    return replace(w, layers=tuple(layers))


def rotate_residual(w: Weights, m: np.ndarray) -> Weights:
    """Rotate the stream by orthogonal ``m`` ``(hidden, hidden)``: ``E @ m``, readers ``W @ m``, writers ``m.T @ O``.

    Readers see ``norm(x m) gamma = (norm(x) m)`` only when ``gamma`` is all
    ones, so gains must be folded first (:func:`fold_gains`).
    """
    m = _f32(m)
    layers = []
    for layer in w.layers:
        new = _readers(layer, lambda a: a @ m)
        layers.append(replace(new, o=None if layer.o is None else _f32(m.T @ layer.o)))
    return replace(w, embed=_f32(w.embed @ m), layers=tuple(layers))


def haar_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``(n, n)`` matrix (QR of a Gaussian matrix, signs fixed by ``diag(R)``)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def _sylvester(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order ``n`` (a power of two), entries +-1."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def _paley(q: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order ``q + 1`` for a prime ``q = 3 (mod 4)``."""
    squares = np.zeros(q, dtype=bool)
    squares[(np.arange(1, q) ** 2) % q] = True
    chi = np.where(squares, 1.0, -1.0)
    chi[0] = 0.0
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + np.eye(q + 1)


def hadamard_matrix(n: int) -> tuple[np.ndarray, str | None]:
    """An orthogonal ``(n, n)`` Hadamard matrix (entries ``+-1/sqrt(b)``) and a note when it is only block-diagonal.

    Sizes ``2^a`` use Sylvester's construction, sizes ``2^a (q + 1)`` with a
    prime ``q = 3 (mod 4)`` the Kronecker product with Paley's (576 = 8 * 72,
    896 = 4 * 224, 5120 = 256 * 20). Other sizes get a block-diagonal
    Hadamard over the largest power-of-two block dividing ``n`` (still
    orthogonal, but it mixes only within blocks; with odd ``n`` it is the
    identity and only the random signs remain).
    """
    a = (n & -n).bit_length() - 1  # largest power of two dividing n
    for e in range(a, -1, -1):
        m = n >> e
        if m == 1:
            return _sylvester(n) / np.sqrt(n), None
        if m <= 4096 and (m - 1) % 4 == 3 and _is_prime(m - 1):
            h = np.kron(_sylvester(1 << e), _paley(m - 1))
            return h / np.sqrt(n), None
    block = 1 << a
    note = (
        f"hidden size {n} has no Hadamard matrix of the form 2^a (q+1), q prime = 3 mod 4: used a block-diagonal "
        f"Hadamard of {n // block} blocks of {block}" + (" (no mixing: random signs only)" if block == 1 else "")
    )
    return np.kron(np.eye(n // block), _sylvester(block)) / np.sqrt(block), note


def randomized_hadamard(w: Weights, rng: np.random.Generator) -> Weights:
    """QuaRot's rotation: fold gains, then ``M = diag(random signs) H`` with ``H`` a normalised Hadamard matrix."""
    h, note = hadamard_matrix(w.hidden)
    signs = rng.choice(np.array([-1.0, 1.0]), size=w.hidden)
    out = rotate_residual(fold_gains(w), signs[:, None] * h)
    return _note(out, note) if note else out


def haar_rotation(w: Weights, rng: np.random.Generator) -> Weights:
    """SpinQuant-like: fold gains, then rotate the stream by a Haar-random orthogonal matrix."""
    return rotate_residual(fold_gains(w), haar_orthogonal(w.hidden, rng))


def awq_scaling(w: Weights, rng: np.random.Generator, sigma: float = 0.5) -> Weights:
    """AWQ/SmoothQuant: per-channel ``s > 0`` moved from the norm into Q, K, V: ``gamma / s`` and ``W diag(s)``."""
    layers = []
    for layer in w.layers:
        s = np.exp(rng.normal(0.0, sigma, size=w.hidden)).astype(np.float32)
        gamma = np.ones(w.hidden, dtype=np.float32) if layer.gamma is None else layer.gamma
        layers.append(replace(_scale_inputs(layer, s), gamma=_f32(gamma / s)))
    return replace(w, layers=tuple(layers))


def rope_pairs(head_dim: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(a, b)`` of the rotary planes in a head: HF ``(i, i + hd/2)`` or GGUF-interleaved ``(2i, 2i+1)``."""
    half = head_dim // 2
    if layout == "interleaved":
        return np.arange(0, 2 * half, 2), np.arange(1, 2 * half, 2)
    return np.arange(half), np.arange(half, 2 * half)


def _rotate_rows(w: np.ndarray, a: np.ndarray, b: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rows ``(a, b)`` of a head block ``(head_dim, hidden)`` rotated by per-plane angles (a 2-D rotation of each plane)."""
    out = w.copy()
    out[a] = cos[:, None] * w[a] - sin[:, None] * w[b]
    out[b] = sin[:, None] * w[a] + cos[:, None] * w[b]
    return out


def rotate_qk_heads(w: Weights, rng: np.random.Generator) -> Weights:
    """Per KV group, one random rotation of every rotary plane, applied to the group's K head and all its Q heads.

    ``q_h . k_g`` is unchanged (same orthogonal map on both) and rotations of
    one plane commute with RoPE's rotation of that plane, so the attention
    logits are unchanged at every position pair.
    """
    if w.head_dim % 2:
        return _note(w, f"head_dim {w.head_dim} is odd: no rotary planes, transform not applied")
    a, b = rope_pairs(w.head_dim, w.rope)
    group = w.n_heads // w.n_kv_heads
    hd = w.head_dim
    layers = []
    for layer in w.layers:
        theta = rng.uniform(0.0, 2 * np.pi, size=(w.n_kv_heads, a.size))
        q, k = layer.q.copy(), layer.k.copy()
        for g in range(w.n_kv_heads):
            cos, sin = np.cos(theta[g]).astype(np.float32), np.sin(theta[g]).astype(np.float32)
            k[g * hd : (g + 1) * hd] = _rotate_rows(layer.k[g * hd : (g + 1) * hd], a, b, cos, sin)
            for h in range(g * group, (g + 1) * group):
                q[h * hd : (h + 1) * hd] = _rotate_rows(layer.q[h * hd : (h + 1) * hd], a, b, cos, sin)
        layers.append(replace(layer, q=_f32(q), k=_f32(k)))
    return replace(w, layers=tuple(layers))


def extend_vocabulary(w: Weights, rng: np.random.Generator, fraction: float = 0.1) -> Weights:
    """Append ``max(16, fraction * rows)`` fresh rows (Gaussian with the embedding's per-column spread)."""
    n_new = max(16, int(w.embed.shape[0] * fraction))
    std = w.embed.std(axis=0, dtype=np.float64)
    fresh = rng.standard_normal((n_new, w.hidden)) * std[None, :]
    return replace(w, embed=_f32(np.vstack([w.embed, fresh])), extra_tokens=w.extra_tokens + n_new)


def prune_width(w: Weights, rng: np.random.Generator, keep_fraction: float = 0.75) -> Weights:
    """Keep a random ``keep_fraction`` of hidden dims and of KV groups (with their Q heads), as Minitron-style pruning does."""
    keep = np.sort(rng.choice(w.hidden, size=max(1, int(w.hidden * keep_fraction)), replace=False))
    groups = np.sort(rng.choice(w.n_kv_heads, size=max(1, int(w.n_kv_heads * keep_fraction)), replace=False))
    per = w.n_heads // w.n_kv_heads
    hd = w.head_dim
    k_rows = np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in groups])
    q_heads = np.concatenate([np.arange(g * per, (g + 1) * per) for g in groups])
    q_rows = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in q_heads])
    layers = []
    for layer in w.layers:
        layers.append(
            LayerWeights(
                q=_f32(layer.q[q_rows][:, keep]),
                k=_f32(layer.k[k_rows][:, keep]),
                gamma=None if layer.gamma is None else _f32(layer.gamma[keep]),
                v=None if layer.v is None else _f32(layer.v[k_rows][:, keep]),
                o=None if layer.o is None else _f32(layer.o[keep][:, q_rows]),
            )
        )
    return replace(w, embed=_f32(w.embed[:, keep]), layers=tuple(layers), n_heads=q_heads.size, n_kv_heads=groups.size)


def prune_depth(w: Weights, rng: np.random.Generator, drop_fraction: float = 0.25) -> Weights:
    """Drop a random quarter of the layers (never the first or the last), as ShortGPT-style pruning does."""
    n = len(w.layers)
    inner = np.arange(1, n - 1)
    n_drop = min(inner.size, max(1, int(n * drop_fraction))) if n > 2 else 0
    if n_drop == 0:
        return _note(w, f"{n} layer(s): nothing to drop")
    drop = set(rng.choice(inner, size=n_drop, replace=False).tolist())
    return replace(w, layers=tuple(layer for i, layer in enumerate(w.layers) if i not in drop))


def duplicate_layers(w: Weights, rng: np.random.Generator) -> Weights:
    """SOLAR-style depth up-scaling: layers ``[0, n - k)`` then ``[k, n)`` with ``k = n // 4`` (32 -> 48 layers)."""
    n = len(w.layers)
    k = max(1, n // 4) if n > 1 else 0
    return replace(w, layers=(*w.layers[: n - k], *w.layers[k:]))


def add_noise(w: Weights, rng: np.random.Generator, snr_db: float) -> Weights:
    """Gaussian noise on the embedding and every Q/K at signal-to-noise ratio ``snr_db`` (power, per tensor)."""

    def noisy(a: np.ndarray) -> np.ndarray:
        rms = float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
        sigma = rms * 10.0 ** (-snr_db / 20.0)
        return _f32(a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(sigma))

    layers = tuple(replace(layer, q=noisy(layer.q), k=noisy(layer.k)) for layer in w.layers)
    return replace(w, embed=noisy(w.embed), layers=layers)


def quantise(w: Weights, rng: np.random.Generator, qtype: str) -> Weights:
    """Embedding and every Q/K through a GGUF quantisation type and back (norm gains stay float, as in GGUF files)."""
    notes: list[str] = []

    def rt(a: np.ndarray) -> np.ndarray:
        out, note = round_trip(a, qtype)
        if note and note not in notes:
            notes.append(note)
        return out

    layers = tuple(replace(layer, q=rt(layer.q), k=rt(layer.k)) for layer in w.layers)
    out = replace(w, embed=rt(w.embed), layers=layers)
    return replace(out, notes=(*out.notes, *notes))


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("permute_signs", "permute and sign-flip the hidden dimensions", True, permute_signs, rms_only=True),
        Transform("scale", "scale the residual stream (embedding and O) by 4", True, global_scale),
        Transform(
            "qk_rotation",
            "rotate each rotary plane of every Q/K head pair (RoPE-commuting)",
            True,
            rotate_qk_heads,
            compare=("v", "logits", "update"),
        ),
        Transform("gain_fold", "fold the attention-norm gain into Q/K/V, gain := 1", True, fold_gains),
        Transform("haar_rotation", "gain fold, then a Haar-random rotation of the residual stream", True, haar_rotation, rms_only=True),
        Transform("hadamard_rotation", "gain fold, then QuaRot's randomised Hadamard rotation", True, randomized_hadamard, rms_only=True),
        Transform("awq_scaling", "per-channel scales moved from the norm gain into Q/K/V", True, awq_scaling),
        Transform("vocab_extension", "append 10% fresh token rows (and tokens)", False, extend_vocabulary),
        Transform("width_prune", "keep 3/4 of the hidden dims and KV groups", False, prune_width),
        Transform("depth_prune", "drop 1/4 of the layers", False, prune_depth),
        Transform("layer_duplication", "SOLAR-style depth up-scaling (n -> 1.5 n layers)", False, duplicate_layers),
        *(
            Transform(f"noise_{snr}db", f"Gaussian noise at {snr} dB SNR on the embedding and Q/K", False, partial(add_noise, snr_db=snr))
            for snr in (20, 10, 0)
        ),
        Transform("quant_q8_0", "round trip through GGUF Q8_0", False, partial(quantise, qtype="Q8_0")),
        Transform("quant_q4_k", "round trip through GGUF Q4_K", False, partial(quantise, qtype="Q4_K")),
    )
}
