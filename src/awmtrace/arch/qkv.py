"""Cut Q and K out of fused QKV weights.

A fused weight ``W`` has shape ``(rows, d_in)`` (after undoing a Conv1D
transpose) and its rows hold the Q, K and V blocks in one of three layouts:

``contiguous``
    ``[Q (nh*hd); K (nkv*hd); V (nkv*hd)]`` - Baichuan ``W_pack``, Qwen-1
    ``c_attn``, GPT-2 and Jais ``c_attn`` (Conv1D, transposed), Phi-3
    ``qkv_proj``, ChatGLM2/3 ``query_key_value`` with multi-query attention,
    MPT ``Wqkv``, OLMo-1 ``att_proj``.
``per_head``
    ``(nh, 3, hd)`` - each head's q, k, v rows in turn: GPT-NeoX/Pythia,
    Bloom, Falcon-RW (``multi_query`` false), ChatGLM-6B v1, ChatGLM2/3
    without multi-query attention.
``kv_group``
    ``(nkv, nh/nkv + 2, hd)`` - per KV group its q heads, then one k and one
    v head: InternLM2 ``wqkv``, Falcon's new decoder architecture, and
    multi-query Falcon (``nkv == 1``).

With ``nkv == 1`` ``kv_group`` equals ``contiguous``, and with ``nkv == nh``
it equals ``per_head``.

GGUF files are not all contiguous: each llama.cpp converter
(``convert_hf_to_gguf.py``) decides, so the layout of a GGUF ``attn_qkv`` is
recorded per family (``gguf_qkv_layout`` in ``architectures.toml``). Checked
there: Falcon, GPT-NeoX and Bloom are reordered to contiguous Q, K, V blocks;
GPT-2 and Jais are transposed back and were contiguous already; Qwen-1, MPT,
Phi-3 and ChatGLM2/3 are written as they are (contiguous in the checkpoint);
Baichuan and InternLM2 are split into separate ``attn_q``/``attn_k``/``attn_v``.
A GGUF ``attn_qkv`` of a family without a recorded layout is refused.

UCKA does not depend on the order of rows inside Q or K, but it does depend
on which rows are Q and which K, so the layout must be right; it is never
guessed from shapes.
"""

from __future__ import annotations

import numpy as np

from awmtrace.errors import UnsupportedArchitecture

__all__ = ["LAYOUTS", "split_qkv", "infer_head_dim"]

LAYOUTS = ("contiguous", "per_head", "kv_group")


def infer_head_dim(rows: int, n_heads: int, n_kv_heads: int, where: str) -> int:
    """Head size from a fused tensor's row count: ``rows = (nh + 2 nkv) hd``."""
    denom = n_heads + 2 * n_kv_heads
    if n_heads <= 0 or n_kv_heads <= 0 or rows <= 0 or rows % denom:
        raise UnsupportedArchitecture(
            f"{where}: fused QKV has {rows} rows, which is not (n_heads + 2*n_kv_heads) * head_dim "
            f"for n_heads={n_heads}, n_kv_heads={n_kv_heads}; the head counts in the config do not fit this tensor"
        )
    return rows // denom


def split_qkv(w: np.ndarray, layout: str, part: str, n_heads: int, n_kv_heads: int, head_dim: int, where: str = "QKV") -> np.ndarray:
    """The ``part`` (``"q"`` or ``"k"``) block of fused weight ``w``: ``(rows, d_in)`` -> ``(n*hd, d_in)``."""
    rows, d_in = w.shape
    if rows != (n_heads + 2 * n_kv_heads) * head_dim:
        raise UnsupportedArchitecture(
            f"{where}: fused QKV has {rows} rows, expected (n_heads {n_heads} + 2 * n_kv_heads {n_kv_heads}) "
            f"* head_dim {head_dim} = {(n_heads + 2 * n_kv_heads) * head_dim}"
        )
    if part not in ("q", "k"):
        raise ValueError(f"part must be 'q' or 'k', got {part!r}")
    q_rows, kv_rows = n_heads * head_dim, n_kv_heads * head_dim
    if layout == "contiguous":
        block = w[:q_rows] if part == "q" else w[q_rows : q_rows + kv_rows]
        return np.ascontiguousarray(block)
    if layout == "per_head":
        if n_heads != n_kv_heads:
            raise UnsupportedArchitecture(f"{where}: per-head interleaved QKV needs n_heads == n_kv_heads, got {n_heads} and {n_kv_heads}")
        heads = w.reshape(n_heads, 3, head_dim, d_in)
        return np.ascontiguousarray(heads[:, 0 if part == "q" else 1]).reshape(-1, d_in)
    if layout == "kv_group":
        if n_heads % n_kv_heads:
            raise UnsupportedArchitecture(f"{where}: grouped QKV needs n_heads divisible by n_kv_heads, got {n_heads} and {n_kv_heads}")
        group = n_heads // n_kv_heads
        blocks = w.reshape(n_kv_heads, group + 2, head_dim, d_in)
        picked = blocks[:, :group] if part == "q" else blocks[:, group]
        return np.ascontiguousarray(picked).reshape(-1, d_in)
    raise UnsupportedArchitecture(f"{where}: unknown fused QKV layout {layout!r} (known: {', '.join(LAYOUTS)})")
