"""Fused QKV layouts against hand-built matrices whose rows say what they are."""

from __future__ import annotations

import numpy as np
import pytest

from awmtrace.arch.qkv import infer_head_dim, split_qkv
from awmtrace.errors import UnsupportedArchitecture

D_IN = 3


def head(kind: str, index: int, hd: int) -> np.ndarray:
    """``hd`` rows whose values encode (kind, head, row): q=1, k=2, v=3 in the hundreds."""
    base = {"q": 100, "k": 200, "v": 300}[kind] + 10 * index
    return np.repeat((base + np.arange(hd, dtype=np.float32))[:, None], D_IN, axis=1)


def expected(kind: str, n: int, hd: int) -> np.ndarray:
    return np.concatenate([head(kind, i, hd) for i in range(n)])


def test_contiguous_blocks() -> None:
    nh, nkv, hd = 4, 2, 2
    w = np.concatenate([expected("q", nh, hd), expected("k", nkv, hd), expected("v", nkv, hd)])
    np.testing.assert_array_equal(split_qkv(w, "contiguous", "q", nh, nkv, hd), expected("q", nh, hd))
    np.testing.assert_array_equal(split_qkv(w, "contiguous", "k", nh, nkv, hd), expected("k", nkv, hd))


def test_per_head_interleaving() -> None:
    # GPT-NeoX / Bloom: rows of head i are q_i, k_i, v_i.
    nh, hd = 3, 2
    w = np.concatenate([np.concatenate([head("q", i, hd), head("k", i, hd), head("v", i, hd)]) for i in range(nh)])
    np.testing.assert_array_equal(split_qkv(w, "per_head", "q", nh, nh, hd), expected("q", nh, hd))
    np.testing.assert_array_equal(split_qkv(w, "per_head", "k", nh, nh, hd), expected("k", nh, hd))


def test_kv_groups() -> None:
    # InternLM2 / Falcon-40B: per group g the query heads g*G .. g*G+G-1, then k_g, then v_g.
    nh, nkv, hd = 6, 2, 2
    group = nh // nkv
    rows = []
    for g in range(nkv):
        rows += [head("q", g * group + j, hd) for j in range(group)] + [head("k", g, hd), head("v", g, hd)]
    w = np.concatenate(rows)
    np.testing.assert_array_equal(split_qkv(w, "kv_group", "q", nh, nkv, hd), expected("q", nh, hd))
    np.testing.assert_array_equal(split_qkv(w, "kv_group", "k", nh, nkv, hd), expected("k", nkv, hd))


def test_layouts_coincide_where_the_documentation_says() -> None:
    rng = np.random.default_rng(0)
    nh, hd = 4, 3
    w = rng.standard_normal(((nh + 2) * hd, D_IN)).astype(np.float32)
    # One KV head: kv_group is contiguous.
    for part in ("q", "k"):
        np.testing.assert_array_equal(split_qkv(w, "kv_group", part, nh, 1, hd), split_qkv(w, "contiguous", part, nh, 1, hd))
    # As many KV heads as query heads: kv_group is per_head.
    w = rng.standard_normal((3 * nh * hd, D_IN)).astype(np.float32)
    for part in ("q", "k"):
        np.testing.assert_array_equal(split_qkv(w, "kv_group", part, nh, nh, hd), split_qkv(w, "per_head", part, nh, nh, hd))


def test_layouts_disagree_on_real_packings() -> None:
    """A wrong layout gives different rows, so a wrong table entry cannot pass the exact-match tests."""
    rng = np.random.default_rng(1)
    nh, hd = 4, 2
    w = rng.standard_normal((3 * nh * hd, D_IN)).astype(np.float32)
    q = {layout: split_qkv(w, layout, "q", nh, nh, hd) for layout in ("contiguous", "per_head")}
    assert not np.array_equal(q["contiguous"], q["per_head"])


def test_infer_head_dim() -> None:
    assert infer_head_dim((32 + 2 * 8) * 128, 32, 8, "x") == 128
    assert infer_head_dim((71 + 2) * 64, 71, 1, "x") == 64


@pytest.mark.parametrize(
    ("rows", "nh", "nkv"),
    [(100, 4, 2), (0, 4, 2), (48, 0, 2), (48, 4, 0)],
)
def test_infer_head_dim_refuses_counts_that_do_not_fit(rows: int, nh: int, nkv: int) -> None:
    with pytest.raises(UnsupportedArchitecture, match="do not fit"):
        infer_head_dim(rows, nh, nkv, "model.safetensors: blk.0")


def test_head_count_mismatches_are_refused() -> None:
    w = np.zeros((4 * 3 * 2, D_IN), dtype=np.float32)
    with pytest.raises(UnsupportedArchitecture, match="expected"):
        split_qkv(w, "contiguous", "q", 4, 2, 2, "f: t")  # (4 + 4) * 2 = 16 rows, not 24
    with pytest.raises(UnsupportedArchitecture, match="n_heads == n_kv_heads"):
        split_qkv(np.zeros(((4 + 4) * 2, D_IN), dtype=np.float32), "per_head", "q", 4, 2, 2)
    with pytest.raises(UnsupportedArchitecture, match="divisible"):
        split_qkv(np.zeros(((3 + 4) * 2, D_IN), dtype=np.float32), "kv_group", "q", 3, 2, 2)
    with pytest.raises(UnsupportedArchitecture, match="unknown fused QKV layout"):
        split_qkv(np.zeros((3 * 4 * 2, D_IN), dtype=np.float32), "interleaved", "q", 4, 4, 2)
