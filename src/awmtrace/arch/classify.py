"""Classifying tensor names against one architecture family: which name is the embedding, Q, K, a norm, an FFN input.

Used by :func:`awmtrace.arch.resolve.resolve`, which turns what is found into a :class:`ModelView`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from awmtrace.arch.names import canonical_role, gguf_role
from awmtrace.arch.table import NORM_ROLES, Family, Pattern, Table, Variant
from awmtrace.errors import AwmError, UnsupportedArchitecture
from awmtrace.io.base import TensorSource
from awmtrace.types import TensorRef

__all__ = ["Found", "Fused", "classify"]

# gguf roles of FFN input projections: role -> (weight, expert). GGUF stacks routed experts in one
# 3-D tensor (``*_exps``), which read_ffn expands; shared experts are recorded as expert -1.
_GGUF_FFN_ROLES: dict[str, tuple[str, int | None]] = {
    "ffn_up": ("up", None),
    "ffn_gate": ("gate", None),
    "ffn_up_shexp": ("up", -1),
    "ffn_gate_shexp": ("gate", -1),
    "ffn_up_exps": ("up", None),
    "ffn_gate_exps": ("gate", None),
}


_BLOCK_NUMBER = re.compile(r"(?:^|\.)(\d+)\.")


def _n_blocks_hint(names: list[str]) -> int:
    numbers = [int(m) for n in names for m in re.findall(r"\.(\d+)\.", n)]
    return (max(numbers) + 1) if numbers else 1


@dataclass
class Fused:
    """A fused QKV tensor of one block: its name, QKV layout (from the family), whether stored transposed, and why."""

    name: str
    layout: str
    transposed: bool
    how: str


@dataclass
class Found:
    """What classifying every name against one family found."""

    embedding: TensorRef | None = None
    q: dict[int, TensorRef] = field(default_factory=dict)
    k: dict[int, TensorRef] = field(default_factory=dict)
    qkv: dict[int, Fused] = field(default_factory=dict)
    ffn: dict[int, dict[str, list[TensorRef]]] = field(default_factory=dict)
    norms: dict[int | None, dict[str, TensorRef]] = field(default_factory=dict)  # block (None: global) -> role -> ref
    by_block: dict[int, list[str]] = field(default_factory=dict)
    claims: dict[tuple[Any, ...], str] = field(default_factory=dict)
    ffn_ambiguous: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)
    norm_ambiguous: dict[tuple[str, int | None], tuple[str, str]] = field(default_factory=dict)
    ignored: int = 0
    recognised: int = 0
    problems: list[AwmError] = field(default_factory=list)

    def claim(self, key: tuple[Any, ...], name: str, where: str) -> bool:
        """Record that ``name`` has role ``key``; a second tensor with the same role is a problem.

        For Q, K and the embedding that is an error; for an FFN input it only
        drops that layer's FFN projection (the attention score does not need it).
        """
        other = self.claims.setdefault(key, name)
        if other != name and key[0] == "ffn":
            self.ffn_ambiguous.setdefault((key[2], key[1]), (other, name))
            return False
        if other != name and key[0] == "norm":
            self.norm_ambiguous.setdefault((key[1], key[2]), (other, name))
            return False
        if other != name:
            self.problems.append(
                UnsupportedArchitecture(
                    f"{where}: tensors {other!r} and {name!r} both look like {_describe(key)}; "
                    "refusing to pick one (is a vision/audio tower missing from ignore_prefixes in architectures.toml?)"
                )
            )
            return False
        return True


def _describe(key: tuple[Any, ...]) -> str:
    if key[0] == "token_embd":
        return "the token embedding"
    if key[0] == "ffn":
        _, weight, bid, expert = key
        return f"the FFN {weight} projection of layer {bid}" + (f" (expert {expert})" if expert is not None else "")
    return f"{key[0]} of layer {key[1]}"


def _rewrites(fam: Family, table: Table) -> list[tuple[str, str]]:
    return [*fam.prefix_rewrites, *((str(a), str(b)) for a, b in table.defaults.get("prefix_rewrites", []))]


def _spellings(name: str, rewrites: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [(name, "")]
    for src, dst in rewrites:
        if name.startswith(src):
            out.append((dst + name[len(src) :], f", prefix {src!r} read as {dst!r}"))
    return out


@dataclass(frozen=True)
class _Hit:
    """What one tensor name was recognised as, by a table pattern or gguf's names."""

    name: str
    role: str
    bid: int | None
    how: str
    by_gguf: bool  # gguf's name map or a GGUF canonical name (not a table pattern)
    xid: int | None = None
    layout: str | None = None
    transposed: bool = False
    order: str | None = None
    shared: bool = False


@dataclass(frozen=True)
class _Context:
    """What classifying the names of one checkpoint against one family needs."""

    fam: Family
    where: str
    is_gguf: bool
    n_blocks: int
    rewrites: list[tuple[str, str]]
    hf_layout: str | None  # the QKV layout of Hugging Face fused tensors (variant first)


def _pattern_hit(name: str, pat: Pattern, m: re.Match[str], rewritten: str, fam: Family) -> _Hit:
    groups = m.groupdict()
    return _Hit(
        name=name,
        role=pat.role,
        bid=int(groups["bid"]) if groups.get("bid") is not None else None,
        xid=int(groups["xid"]) if groups.get("xid") is not None else None,
        how=f"architectures.toml [{fam.name}] {pat.template}{rewritten}",
        by_gguf=False,
        layout=pat.layout,
        transposed=pat.transposed,
        order=pat.order,
        shared=pat.shared_expert,
    )


def _recognise(name: str, ctx: _Context) -> _Hit | None:
    """The first spelling of ``name`` that a family pattern, then gguf's names, resolve."""
    fam = ctx.fam
    for cand, rewritten in _spellings(name, ctx.rewrites):
        for pat in fam.patterns:
            m = pat.regex.match(cand)
            if m:
                return _pattern_hit(name, pat, m, rewritten, fam)
        if ctx.is_gguf:
            gguf_hit = gguf_role(cand)
            if gguf_hit is not None:
                return _Hit(name, gguf_hit[0], gguf_hit[1], "GGUF canonical name", True, xid=gguf_hit[2])
            continue
        hf_hit = canonical_role(cand, fam.gguf_arch, ctx.n_blocks)
        if hf_hit is not None:
            role, bid = hf_hit
            how = f"gguf TensorNameMap({fam.gguf_arch.name}){rewritten}"
            return _Hit(name, role, bid, how, True, transposed=role in fam.hf_transposed)
    return None


def classify(source: TensorSource, fam: Family, table: Table, variant: Variant | None) -> Found:
    """Every name of ``source`` classified against family ``fam`` (and its config ``variant``): what was found, and the problems."""
    names = source.names()
    ctx = _Context(
        fam=fam,
        where=str(source.path),
        is_gguf=source.format == "gguf",
        n_blocks=_n_blocks_hint(names),
        rewrites=_rewrites(fam, table),
        hf_layout=(variant.qkv_layout if variant is not None else None) or fam.qkv_layout,
    )
    found = Found()
    ignore = tuple(table.defaults.get("ignore_prefixes", []))
    for name in names:
        if name.startswith(ignore):
            found.ignored += 1
            continue
        hit = _recognise(name, ctx)
        if hit is None:
            m_bid = _BLOCK_NUMBER.search(name)
            if m_bid is not None:
                found.by_block.setdefault(int(m_bid.group(1)), []).append(name)
            continue
        if hit.bid is not None:
            found.by_block.setdefault(hit.bid, []).append(name)
        _record(found, hit, ctx)
    return found


def _is_ffn_role(role: str) -> bool:
    return role == "ffn_gate_up" or role in ("ffn_up", "ffn_gate") or role in _GGUF_FFN_ROLES


def _record(found: Found, hit: _Hit, ctx: _Context) -> None:
    """File a recognised tensor under its role (claims catch two tensors for one role)."""
    role, bid, name, where = hit.role, hit.bid, hit.name, ctx.where
    if role == "token_embd" and bid is None:
        found.recognised += 1
        if found.claim(("token_embd",), name, where):
            found.embedding = TensorRef(name=name, role="token_embd", how=hit.how)
    elif role in ("attn_q", "attn_k") and bid is not None:
        found.recognised += 1
        if found.claim((role, bid), name, where):
            ref = TensorRef(name=name, role=f"blk.{bid}.{role}", how=hit.how, transposed=hit.transposed)
            (found.q if role == "attn_q" else found.k)[bid] = ref
    elif role == "attn_qkv" and bid is not None:
        found.recognised += 1
        _record_qkv(found, hit, bid, ctx)
    elif role in NORM_ROLES and (bid is None) == (role == "token_embd_norm"):
        # Norm weights do not count as recognised: they never decide which family fits.
        if found.claim(("norm", role, bid), name, where):
            found.norms.setdefault(bid, {})[role] = TensorRef(name=name, role=f"blk.{bid}.{role}" if bid is not None else role, how=hit.how)
    elif bid is not None and _is_ffn_role(role):
        found.recognised += 1
        _record_ffn(found, hit, bid, where)


def _record_qkv(found: Found, hit: _Hit, bid: int, ctx: _Context) -> None:
    layout = hit.layout or (ctx.fam.gguf_qkv_layout if ctx.is_gguf else ctx.hf_layout)
    if layout is None:
        fmt = "GGUF files" if ctx.is_gguf else "Hugging Face checkpoints"
        found.problems.append(
            UnsupportedArchitecture(
                f"{ctx.where}: fused QKV tensor {hit.name!r}: architectures.toml gives no QKV layout for "
                f"{fmt} of family {ctx.fam.name!r}; refusing to guess how Q, K and V are packed"
            )
        )
    elif found.claim(("attn_qkv", bid), hit.name, ctx.where):
        found.qkv[bid] = Fused(hit.name, layout, hit.transposed, hit.how)


def _record_ffn(found: Found, hit: _Hit, bid: int, where: str) -> None:
    role = hit.role
    if role in _GGUF_FFN_ROLES and hit.by_gguf:
        weight, expert = _GGUF_FFN_ROLES[role]
        expert = hit.xid if hit.xid is not None else expert
    else:
        weight, expert = role.removeprefix("ffn_"), (-1 if hit.shared else hit.xid)
    fused = weight == "gate_up"
    for part in ("gate", "up") if fused else (weight,):
        stacked = "exps" if role.endswith("_exps") else expert
        if not found.claim(("ffn", part, bid, stacked), hit.name, where):
            continue
        ref = TensorRef(
            name=hit.name,
            role=f"blk.{bid}.ffn_{part}",
            how=hit.how,
            part=part if fused else None,
            layout=hit.order if fused else None,
            transposed=hit.transposed,
            expert=expert,
        )
        found.ffn.setdefault(bid, {}).setdefault(part, []).append(ref)
