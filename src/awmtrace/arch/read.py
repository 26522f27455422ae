"""Reading resolved tensors: norm gains, Q/K (fused QKV cut) and FFN inputs (experts expanded, fused gate/up halved) as float32.

The :class:`ModelView` from :func:`awmtrace.arch.resolve.resolve` says which
tensor holds what; these functions read it and check what they read.
"""

from __future__ import annotations

import numpy as np

from awmtrace.arch.qkv import infer_head_dim, split_qkv
from awmtrace.errors import FormatError, NumericalError, UnsupportedArchitecture
from awmtrace.io.base import TensorSource
from awmtrace.types import LayerRefs, ModelView, TensorRef

__all__ = ["read_attention", "read_ffn", "read_norm"]


def read_norm(source: TensorSource, view: ModelView, ref: TensorRef) -> np.ndarray:
    """The effective gain of a norm: float32 ``(hidden,)``, ``view.norm_offset`` added.

    Raises :class:`FormatError` for a shape other than ``(hidden,)`` and
    :class:`NumericalError` for NaN/Inf or an all-zero gain (which would
    zero the whole input of the layer). Single zero entries are accepted:
    they switch that hidden dimension off for this layer's input, and the
    folded ``W @ diag(gamma)`` says exactly that.
    """
    where = f"{source.path}: norm tensor {ref.name!r}"
    shape = tuple(source.shape(ref.name))
    if shape != (view.hidden_size,):
        raise FormatError(
            f"{where} has shape {shape}, expected ({view.hidden_size},) (one gain per hidden dimension); "
            "the checkpoint is damaged or the tensor is not a norm weight. Pass fold_norms=False (--no-fold-norms) to score without it"
        )
    gain = np.asarray(source.read(ref.name), dtype=np.float32).reshape(-1)
    if view.norm_offset:
        gain = gain + np.float32(view.norm_offset)
    bad = int(np.count_nonzero(~np.isfinite(gain)))
    if bad:
        raise NumericalError(f"{where}: {bad} NaN/Inf gain value(s); the checkpoint is damaged")
    if not gain.any():
        stored = f" (stored as -{view.norm_offset:g}: the gain is {view.norm_offset:g} + weight)" if view.norm_offset else ""
        raise NumericalError(f"{where}: every gain is 0{stored}, so the layer's input would be zero; the checkpoint is damaged")
    return gain


def _matrix(source: TensorSource, view: ModelView, ref: TensorRef, cache: dict[str, np.ndarray]) -> np.ndarray:
    if ref.name not in cache:
        cache[ref.name] = source.read(ref.name)
    w = cache[ref.name]
    if ref.transposed:
        w = w.T
    if ref.part is None:
        return np.ascontiguousarray(w)
    if view.n_heads is None or view.n_kv_heads is None or ref.layout is None:
        raise UnsupportedArchitecture(f"{source.path}: {ref.name}: cutting a fused QKV tensor needs head counts and a layout")
    head_dim = infer_head_dim(w.shape[0], view.n_heads, view.n_kv_heads, f"{source.path}: {ref.name}")
    return split_qkv(w, ref.layout, ref.part, view.n_heads, view.n_kv_heads, head_dim, f"{source.path}: {ref.name}")


def read_attention(source: TensorSource, view: ModelView, layer: LayerRefs) -> tuple[np.ndarray, np.ndarray]:
    """Q and K of one layer as float32 ``(d_out, hidden)`` matrices (fused QKV is read once and cut)."""
    cache: dict[str, np.ndarray] = dict(source.read_many(sorted({layer.q.name, layer.k.name})))
    q = _matrix(source, view, layer.q, cache)
    k = _matrix(source, view, layer.k, cache)
    return q, k


def _half(w: np.ndarray, ref: TensorRef, where: str) -> np.ndarray:
    """The ``ref.part`` half of a fused gate/up weight ``(2 * d_ff, hidden)`` -> ``(d_ff, hidden)``."""
    rows = w.shape[0]
    if rows % 2:
        raise UnsupportedArchitecture(f"{where}: fused gate/up tensor {ref.name!r} has an odd number of rows ({rows})")
    first = ref.layout.split("_")[0] if ref.layout else "gate"
    block = w[: rows // 2] if ref.part == first else w[rows // 2 :]
    return np.ascontiguousarray(block)


def read_ffn(source: TensorSource, view: ModelView, layer: LayerRefs, weight: str) -> list[tuple[int | None, np.ndarray]]:
    """FFN input projections of one layer: ``[(expert, (d_ff, hidden))]``, one entry for a dense FFN.

    Stacked GGUF experts ``(n_expert, d_ff, hidden)`` are expanded; fused
    gate/up tensors are cut in halves in the family's order.
    """
    refs = layer.up if weight == "up" else layer.gate
    out: list[tuple[int | None, np.ndarray]] = []
    for ref in refs:
        w = source.read(ref.name)
        if ref.transposed:
            w = w.T
        if w.ndim == 3:
            out.extend((i, np.ascontiguousarray(w[i])) for i in range(w.shape[0]))
        elif ref.part is not None:
            out.append((ref.expert, _half(w, ref, str(source.path))))
        else:
            out.append((ref.expert, np.ascontiguousarray(w)))
    return out
