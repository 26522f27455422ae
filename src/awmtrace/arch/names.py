"""Hugging Face tensor names -> canonical GGUF roles, through ``gguf.TensorNameMap``.

This is the only module that imports ``gguf.tensor_mapping``. ``TensorNameMap``
mutates class-level state for some architectures (its constructor
``update``s the shared ``block_mappings_cfg`` with per-architecture entries),
so maps are built here under a snapshot/restore of that dict and cached.
"""

from __future__ import annotations

import copy
import re
import threading
from functools import lru_cache

import gguf
from gguf import MODEL_ARCH, TensorNameMap

__all__ = ["canonical_role", "gguf_arch", "gguf_role", "known_gguf_archs", "ROLE_PATTERN"]

_LOCK = threading.Lock()

# Canonical roles we use, as GGUF spells them (without ``.weight``).
ROLE_PATTERN = re.compile(r"^(?:blk\.(?P<bid>\d+)\.)?(?P<role>[a-z0-9_]+?)(?:\.(?P<xid>\d+))?$")


def known_gguf_archs() -> list[str]:
    return [a.name for a in MODEL_ARCH]


def gguf_arch(name: str) -> MODEL_ARCH:
    """``MODEL_ARCH`` by enum name (``"LLAMA"``) or GGUF spelling (``"llama"``)."""
    try:
        return MODEL_ARCH[name.upper()]
    except KeyError:
        pass
    for arch, spelled in gguf.MODEL_ARCH_NAMES.items():
        if spelled == name:
            return arch
    raise KeyError(name)


@lru_cache(maxsize=64)
def _name_map(arch: MODEL_ARCH, n_blocks: int) -> TensorNameMap:
    with _LOCK:
        saved = copy.copy(TensorNameMap.block_mappings_cfg)
        try:
            return TensorNameMap(arch, n_blocks)
        finally:
            TensorNameMap.block_mappings_cfg.clear()
            TensorNameMap.block_mappings_cfg.update(saved)


def canonical_role(name: str, arch: MODEL_ARCH, n_blocks: int) -> tuple[str, int | None] | None:
    """Canonical role of a ``.weight`` tensor name: ``("attn_q", 3)``, ``("token_embd", None)``, or ``None``.

    Biases and other suffixes are not roles the method reads, so only
    ``.weight`` names (or bare names, as some checkpoints use) are mapped.
    """
    if name.endswith(".bias"):
        return None
    base = name[: -len(".weight")] if name.endswith(".weight") else name
    hit = _name_map(arch, max(n_blocks, 1)).get_type_and_name(base)
    if hit is None:
        return None
    canonical = hit[1]
    m = ROLE_PATTERN.match(canonical)
    if m is None:
        return None
    bid = m.group("bid")
    return m.group("role"), (int(bid) if bid is not None else None)


def gguf_role(name: str) -> tuple[str, int | None, int | None] | None:
    """Role of a tensor name in a GGUF file, where names are canonical already.

    ``blk.3.attn_qkv.weight`` -> ``("attn_qkv", 3, None)``; the per-expert
    names of early Mixtral GGUF files, ``blk.3.ffn_gate.5.weight``, give
    ``("ffn_gate", 3, 5)``. No name map is involved, so a GGUF tensor is
    recognised even when gguf's tables do not list it for the file's
    architecture (and is then refused with a reason instead of looking absent).
    """
    if not name.endswith(".weight"):
        return None
    m = ROLE_PATTERN.match(name[: -len(".weight")])
    if m is None:
        return None
    bid, xid = m.group("bid"), m.group("xid")
    return m.group("role"), (int(bid) if bid is not None else None), (int(xid) if xid is not None else None)
