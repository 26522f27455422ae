"""GGUF quantisation round trips for the robustness audit.

``gguf.quants`` (0.19) quantises Q8_0, Q4_0, Q5_0 and friends but raises
``NotImplementedError`` for the k-quants; it does dequantise them. Q4_K is
therefore quantised here by a vectorised port of ggml's reference
``quantize_row_q4_K_ref`` / ``make_qkx2_quants`` (ggml-quants.c: per 32-value
sub-block a weighted least-squares scale and min over 21 candidate scales,
then 6-bit scales and mins per 256-value super-block, fp16 ``d``/``dmin``),
written as real Q4_K blocks and decoded by ``gguf.quants.dequantize``, so
the bytes are what a GGUF file would hold. The only departure: float32 sums
run in numpy's order instead of C's sequential one and candidate errors are
compared in an expanded form, which can flip a near-tie (tests compare it
with a literal scalar transcription: byte-identical blocks but for such ties).

Rows whose length is not a multiple of the block size fall back the way
llama.cpp's ``llama_tensor_get_type`` does: Q4_K -> Q5_0 (-> F16), others -> F16.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

__all__ = ["round_trip", "quantize_q4_k"]

QK_K = 256
_FALLBACK = {"Q4_K": "Q5_0"}
_BLOCKS_PER_CHUNK = 1 << 14  # super-blocks quantised at a time (bounds the temporaries to ~50 MB)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23


def _nearest(x: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` for ``|x| < 2^22``: the float32 add-and-subtract trick, rounding half to even."""
    return (x + _MAGIC) - _MAGIC


def _rowsum(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij->i", a).astype(np.float64)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1, nstep: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` for many sub-blocks at once: ``x``, ``w``: ``(n, 32)`` float32 -> ``(scale, the_min, levels)``.

    ``scale``, ``the_min`` (ggml's ``-min``, >= 0): ``(n,)``; ``levels``: ``(n, 32)``.
    As in ggml, an accepted candidate's min is used by the later candidates
    (both in ``max - min`` and in ``x - min``). Candidate errors
    ``sum w (s l + m - x)^2`` are expanded into the weighted sums the fit
    already has (in float64) instead of a second pass per candidate; that only
    reorders the arithmetic of ggml's comparison.
    """
    mn = np.minimum(x.min(axis=1), 0.0)
    mx = x.max(axis=1)
    flat = mx == mn
    # Per sub-block sums in float32, as ggml accumulates them; the candidate
    # comparison below runs in float64 on these (n,) vectors.
    sum_w = _rowsum(w)
    wx = w * x
    sum_x = _rowsum(wx)
    sum_x2 = _rowdot(wx, x)

    def levels_at(iscale: np.ndarray, low: np.ndarray) -> np.ndarray:
        return np.clip(_nearest(iscale[:, None] * (x - low[:, None])), 0, nmax)

    def fit(iscale: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        aux = levels_at(iscale, low)
        wa = w * aux
        return _rowsum(wa), _rowdot(wa, aux), _rowdot(wa, x)

    def error(s: np.ndarray, m: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray) -> np.ndarray:
        return s * s * sl2 + 2 * s * m * sl - 2 * s * sxl + m * m * sum_w - 2 * m * sum_x + sum_x2

    low = mn.astype(np.float32)
    iscale0 = (nmax / np.where(flat, np.float32(1.0), mx - low)).astype(np.float32)
    sl, sl2, sxl = fit(iscale0, low)
    scale = 1.0 / iscale0.astype(np.float64)
    best = error(scale, low.astype(np.float64), sl, sl2, sxl)
    best_iscale, best_shift = iscale0, low
    for step in range(nstep + 1):
        span = np.where(flat, np.float32(1.0), mx - low)
        iscale = ((rmin + rdelta * step + nmax) / span).astype(np.float32)
        sl, sl2, sxl = fit(iscale, low)
        det = sum_w * sl2 - sl * sl
        ok = det > 0
        det = np.where(ok, det, 1.0)
        this_scale = (sum_w * sxl - sum_x * sl) / det
        this_min = (sl2 * sum_x - sl * sxl) / det
        positive = this_min > 0
        this_scale = np.where(positive, sxl / np.where(sl2 > 0, sl2, 1.0), this_scale)
        this_min = np.where(positive, 0.0, this_min)
        err = error(this_scale, this_min, sl, sl2, sxl)
        better = ok & ~flat & (err < best)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        best_iscale, best_shift = np.where(better, iscale, best_iscale), np.where(better, low, best_shift)
        low = np.where(better, this_min, low).astype(np.float32)
    levels = np.where(flat[:, None], np.float32(0.0), levels_at(best_iscale, best_shift))
    return np.where(flat, 0.0, scale).astype(np.float32), (-low).astype(np.float32), levels


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    """``x``: ``(nb, 256)`` float32 -> ``(nb, 144)`` uint8 Q4_K blocks (``d``, ``dmin``, 12 scale bytes, 128 nibble bytes)."""
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av_x = np.sqrt(np.mean(np.square(sub), axis=1))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, levels = _make_qkx2(sub, weights)
    scales, mins, levels = scales.reshape(nb, 8), mins.reshape(nb, 8), levels.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), 0.0)
    max_min = np.maximum(mins.max(axis=1), 0.0)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d = (max_scale / 63.0).astype(np.float16)
    dmin = (max_min / 63.0).astype(np.float16)
    d_sub = d.astype(np.float32)[:, None] * ls.astype(np.float32)
    dm_sub = dmin.astype(np.float32)[:, None] * lm.astype(np.float32)
    nonzero = d_sub != 0
    requant = np.clip(np.rint((x.reshape(nb, 8, 32) + dm_sub[..., None]) / np.where(nonzero, d_sub, 1.0)[..., None]), 0, 15)
    levels = np.where(nonzero[..., None], requant, levels).astype(np.uint8).reshape(nb, 4, 2, 32)
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 4)).reshape(nb, 128)
    out = np.empty((nb, 144), dtype=np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = packed
    out[:, 16:] = qs
    return out


def quantize_q4_k(a: np.ndarray) -> np.ndarray:
    """``a``: ``(rows, cols)`` float32 with ``cols % 256 == 0`` -> ``(rows, cols // 256 * 144)`` uint8, as GGUF stores Q4_K."""
    rows, cols = a.shape
    if cols % QK_K:
        raise ValueError(f"Q4_K needs rows of a multiple of {QK_K} values, got {cols}")
    flat = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((flat.shape[0], 144), dtype=np.uint8)
    for start in range(0, flat.shape[0], _BLOCKS_PER_CHUNK):
        out[start : start + _BLOCKS_PER_CHUNK] = _q4_k_blocks(flat[start : start + _BLOCKS_PER_CHUNK])
    return out.reshape(rows, -1)


def _fits(qtype: str, cols: int) -> bool:
    return cols % GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0] == 0


def round_trip(a: np.ndarray, qtype: str) -> tuple[np.ndarray, str | None]:
    """``a`` ``(rows, cols)`` quantised to ``qtype`` and dequantised (float32), and a note when a fallback type was used."""
    cols = a.shape[-1]
    used = qtype
    if not _fits(used, cols):
        used = _FALLBACK.get(qtype, "F16")
        if used != "F16" and not _fits(used, cols):
            used = "F16"
    note = None if used == qtype else f"rows of {cols} values do not fill {qtype} blocks: quantised as {used}, as llama.cpp does"
    a = np.ascontiguousarray(a, dtype=np.float32)
    if used == "F16":
        return a.astype(np.float16).astype(np.float32), note
    qt = GGMLQuantizationType[used]
    data = quantize_q4_k(a) if used == "Q4_K" else quantize(a, qt)
    return np.ascontiguousarray(dequantize(data, qt), dtype=np.float32).reshape(a.shape), note
