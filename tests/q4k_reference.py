"""A literal, scalar transcription of ggml's ``quantize_row_q4_K_ref`` (ggml-quants.c), float32 throughout.

Slow (pure Python); used only to check the vectorised port in :mod:`awmtrace.quantize` on a few blocks.
"""

from __future__ import annotations

import numpy as np

F = np.float32


def nearest_int(x: np.float32) -> int:
    return int(np.rint(x))  # ggml's float trick rounds half to even, as rint does


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1, nstep: int = 20):
    n = x.size
    L = [0] * n
    mn, mx = F(x[0]), F(x[0])
    sum_w = F(weights[0])
    sum_x = F(sum_w * x[0])
    for i in range(1, n):
        mn = min(mn, F(x[i]))
        mx = max(mx, F(x[i]))
        w = F(weights[i])
        sum_w = F(sum_w + w)
        sum_x = F(sum_x + w * x[i])
    if mn > 0:
        mn = F(0)
    if mx == mn:
        return F(0), F(-mn), [0] * n
    iscale = F(F(nmax) / F(mx - mn))
    scale = F(F(1) / iscale)
    best_error = F(0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn)))))
        diff = F(F(scale * L[i]) + mn - x[i])
        best_error = F(best_error + F(weights[i]) * F(diff * diff))
    for step in range(nstep + 1):
        iscale = F(F(F(rmin) + F(rdelta) * step + nmax) / F(mx - mn))
        sum_l = sum_l2 = sum_xl = F(0)
        aux = [0] * n
        for i in range(n):
            lv = max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn)))))
            aux[i] = lv
            w = F(weights[i])
            sum_l = F(sum_l + w * lv)
            sum_l2 = F(sum_l2 + w * lv * lv)
            sum_xl = F(sum_xl + w * lv * x[i])
        det = F(sum_w * sum_l2 - sum_l * sum_l)
        if det > 0:
            this_scale = F(F(sum_w * sum_xl - sum_x * sum_l) / det)
            this_min = F(F(sum_l2 * sum_x - sum_l * sum_xl) / det)
            if this_min > 0:
                this_min = F(0)
                this_scale = F(sum_xl / sum_l2)
            cur = F(0)
            for i in range(n):
                diff = F(this_scale * aux[i] + this_min - x[i])
                cur = F(cur + F(weights[i]) * F(diff * diff))
            if cur < best_error:
                L, best_error, scale, mn = list(aux), cur, this_scale, this_min
    return scale, F(-mn), L


def quantize_block_q4_k(x: np.ndarray) -> bytes:
    """One 256-value super-block -> its 144 bytes."""
    x = x.astype(np.float32)
    L = [0] * 256
    scales, mins = [F(0)] * 8, [F(0)] * 8
    max_scale = max_min = F(0)
    for j in range(8):
        sub = x[32 * j : 32 * j + 32]
        sum_x2 = F(0)
        for v in sub:
            sum_x2 = F(sum_x2 + v * v)
        av_x = F(np.sqrt(F(sum_x2 / 32)))
        weights = np.array([F(av_x + abs(v)) for v in sub], dtype=np.float32)
        scales[j], mins[j], L[32 * j : 32 * j + 32] = make_qkx2_quants(sub, weights)
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    inv_scale = F(63 / max_scale) if max_scale > 0 else F(0)
    inv_min = F(63 / max_min) if max_min > 0 else F(0)
    sc = [0] * 12
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, nearest_int(F(inv_scale * scales[j])))
        lm = min(63, nearest_int(F(inv_min * mins[j])))
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            sc[j], sc[j + 4] = ls, lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    d = np.float16(F(max_scale / 63))
    dmin = np.float16(F(max_min / 63))
    for j in range(8):
        dj = F(F(d) * ls_all[j])
        if dj == 0:
            continue
        dm = F(F(dmin) * lm_all[j])
        for i in range(32):
            L[32 * j + i] = max(0, min(15, nearest_int(F(F(x[32 * j + i] + dm) / dj))))
    qs = bytearray()
    for j in range(0, 256, 64):
        qs.extend(L[j + i] | (L[j + i + 32] << 4) for i in range(32))
    return d.tobytes() + dmin.tobytes() + bytes(sc) + bytes(qs)
