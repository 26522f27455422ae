"""From a :class:`TensorSource` to a :class:`ModelView`: which tensor is the embedding, Q, K.

Names are resolved in this order, and every decision is recorded in the
``how`` of each :class:`TensorRef`:

1. tensors under an ignored tower (vision, audio, projectors) are skipped;
2. the family's own patterns in ``architectures.toml`` (fused QKV names gguf
   does not know, Conv1D transposes, MoE experts);
3. ``gguf.TensorNameMap`` for the family's GGUF architecture, first on the
   name as it is, then with each wrapper prefix stripped.

A block without both Q and K (separate or fused) is an error listing the
names seen; no layer is ever dropped silently.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from gguf import MODEL_ARCH

from awmtrace.arch.names import canonical_role, gguf_arch
from awmtrace.arch.qkv import LAYOUTS, infer_head_dim, split_qkv
from awmtrace.errors import MissingTensor, UnsupportedArchitecture
from awmtrace.io.base import TensorSource
from awmtrace.types import LayerRefs, ModelView, TensorRef

__all__ = ["Family", "Table", "load_table", "resolve", "read_attention", "read_ffn", "config_value"]

_ROLE_Q, _ROLE_K, _ROLE_QKV, _ROLE_EMBD = "attn_q", "attn_k", "attn_qkv", "token_embd"
_FFN_ROLES = {"ffn_up": ("up", None), "ffn_gate": ("gate", None), "ffn_up_shexp": ("up", -1), "ffn_gate_shexp": ("gate", -1)}


@dataclass(frozen=True)
class Pattern:
    template: str
    regex: re.Pattern[str]
    role: str
    layout: str | None = None
    transposed: bool = False
    weight: str | None = None  # "up" | "gate" for FFN/expert patterns


@dataclass(frozen=True)
class Family:
    name: str
    gguf_arch: MODEL_ARCH
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    gguf_names: tuple[str, ...]
    qkv_layout: str | None
    gguf_qkv_layout: str
    patterns: tuple[Pattern, ...]
    source: str
    example_config: dict[str, Any] = field(default_factory=dict)
    example_tensors: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    defaults: dict[str, Any]
    families: dict[str, Family]


def _compile(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")
    return re.compile(f"^{escaped}$")


@lru_cache(maxsize=1)
def load_table() -> Table:
    """Parse ``architectures.toml`` (cached)."""
    text = (resources.files("awmtrace.arch") / "architectures.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    families: dict[str, Family] = {}
    for name, entry in data.get("families", {}).items():
        patterns = []
        for p in entry.get("tensors", []):
            layout = p.get("layout")
            if layout is not None and layout not in LAYOUTS:
                raise ValueError(f"architectures.toml [{name}]: unknown layout {layout!r}")
            patterns.append(
                Pattern(
                    template=p["pattern"],
                    regex=_compile(p["pattern"]),
                    role=p["role"],
                    layout=layout,
                    transposed=bool(p.get("transposed", False)),
                    weight=p.get("weight"),
                )
            )
        families[name] = Family(
            name=name,
            gguf_arch=gguf_arch(entry["gguf_arch"]),
            architectures=tuple(entry.get("architectures", ())),
            model_types=tuple(entry.get("model_types", ())),
            gguf_names=tuple(entry.get("gguf_names", ())),
            qkv_layout=entry.get("qkv_layout"),
            gguf_qkv_layout=entry.get("gguf_qkv_layout", "contiguous"),
            patterns=tuple(patterns),
            source=entry.get("source", ""),
            example_config=dict(entry.get("example_config", {})),
            example_tensors=tuple(entry.get("example_tensors", ())),
            raw=entry,
        )
    return Table(defaults=data.get("defaults", {}), families=families)


def config_value(config: dict[str, Any], keys: list[str]) -> Any:
    """First present key (dotted keys look into nested objects) or ``None``."""
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _text_config(config: dict[str, Any], table: Table) -> dict[str, Any]:
    """The language model's config: the top level, overlaid by a nested text config when present."""
    for key in table.defaults.get("text_config_keys", []):
        inner = config.get(key)
        if isinstance(inner, dict):
            merged = {k: v for k, v in config.items() if k not in table.defaults.get("text_config_keys", [])}
            merged.update(inner)
            return merged
    return config


def _declared(source: TensorSource, config: dict[str, Any]) -> tuple[list[str], str]:
    """Architecture names the checkpoint declares, most specific first, and a display name."""
    if source.format == "gguf":
        arch = str(source.metadata.get("general.architecture", ""))
        return ([arch] if arch else []), (arch or "unknown")
    names: list[str] = []
    archs = config.get("architectures")
    if isinstance(archs, list):
        names.extend(str(a) for a in archs)
    for key in ("model_type",):
        if isinstance(config.get(key), str):
            names.append(config[key])
    return names, (names[0] if names else "unknown")


def _select_family(source: TensorSource, declared: list[str], table: Table) -> tuple[Family | None, str]:
    for name in declared:
        for fam in table.families.values():
            if source.format == "gguf":
                if name in fam.gguf_names:
                    return fam, f"GGUF general.architecture={name!r}"
            elif name in fam.architectures or name in fam.model_types:
                return fam, f"config declares {name!r}"
    return None, ""


def _n_blocks_hint(names: list[str]) -> int:
    numbers = [int(m) for n in names for m in re.findall(r"\.(\d+)\.", n)]
    return (max(numbers) + 1) if numbers else 1


@dataclass
class _Found:
    embedding: TensorRef | None = None
    q: dict[int, TensorRef] = field(default_factory=dict)
    k: dict[int, TensorRef] = field(default_factory=dict)
    qkv: dict[int, tuple[str, str, bool, str]] = field(default_factory=dict)  # bid -> (name, layout, transposed, how)
    ffn: dict[int, dict[str, list[TensorRef]]] = field(default_factory=dict)
    by_block: dict[int, list[str]] = field(default_factory=dict)
    ignored: int = 0
    unknown: list[str] = field(default_factory=list)


def _classify(source: TensorSource, fam: Family, table: Table) -> _Found:
    names = source.names()
    found = _Found()
    n_blocks = _n_blocks_hint(names)
    ignore = tuple(table.defaults.get("ignore_prefixes", []))
    strips = sorted(table.defaults.get("strip_prefixes", []), key=len, reverse=True)
    is_gguf = source.format == "gguf"
    for name in names:
        if name.startswith(ignore):
            found.ignored += 1
            continue
        candidates = [(name, "")] + [(name[len(p) :], p) for p in strips if name.startswith(p)]
        hit = None
        for cand, prefix in candidates:
            for pat in fam.patterns:
                m = pat.regex.match(cand)
                if m:
                    hit = ("pattern", pat, m, prefix)
                    break
            if hit:
                break
            role = canonical_role(cand, fam.gguf_arch, n_blocks)
            if role is not None:
                hit = ("gguf", role, None, prefix)
                break
        if hit is None:
            found.unknown.append(name)
            continue
        kind, what, m, prefix = hit
        stripped = f", prefix {prefix!r} stripped" if prefix else ""
        if kind == "pattern":
            pat = what
            bid = int(m.group("bid")) if "bid" in m.groupdict() else None
            xid = int(m.group("xid")) if "xid" in m.groupdict() else None
            how = f"architectures.toml [{fam.name}] {pat.template}{stripped}"
            role, layout, transposed, weight = pat.role, pat.layout, pat.transposed, pat.weight
        else:
            role, bid = what
            xid = None
            how = f"gguf TensorNameMap({fam.gguf_arch.name}){stripped}"
            layout = fam.gguf_qkv_layout if is_gguf else fam.qkv_layout
            transposed, weight = False, None
        if bid is not None:
            found.by_block.setdefault(bid, []).append(name)
        if role == _ROLE_EMBD and bid is None:
            if found.embedding is None:
                found.embedding = TensorRef(name=name, role="token_embd", how=how)
        elif role == _ROLE_Q and bid is not None:
            found.q.setdefault(bid, TensorRef(name=name, role=f"blk.{bid}.attn_q", how=how, transposed=transposed))
        elif role == _ROLE_K and bid is not None:
            found.k.setdefault(bid, TensorRef(name=name, role=f"blk.{bid}.attn_k", how=how, transposed=transposed))
        elif role == _ROLE_QKV and bid is not None:
            if layout is None:
                raise UnsupportedArchitecture(
                    f"{source.path}: fused QKV tensor {name!r} of family {fam.name!r} has no known layout in "
                    "architectures.toml; refusing to guess how Q, K and V are packed"
                )
            found.qkv.setdefault(bid, (name, layout, transposed, how))
        elif bid is not None and (weight is not None or role in _FFN_ROLES):
            w, expert = (weight, xid) if weight is not None else _FFN_ROLES[role]
            ref = TensorRef(name=name, role=f"blk.{bid}.ffn_{w}", how=how, transposed=transposed, expert=expert)
            found.ffn.setdefault(bid, {}).setdefault(w, []).append(ref)
    return found


def _heads(source: TensorSource, config: dict[str, Any], table: Table) -> tuple[int | None, int | None, int | None]:
    d = table.defaults
    if source.format == "gguf":
        arch = source.metadata.get("general.architecture", "")
        nh = source.metadata.get(f"{arch}.attention.head_count")
        nkv = source.metadata.get(f"{arch}.attention.head_count_kv", nh)
        hd = source.metadata.get(f"{arch}.attention.key_length")
    else:
        nh = config_value(config, d.get("n_heads_keys", []))
        nkv = config_value(config, d.get("n_kv_heads_keys", []))
        if config.get("multi_query_attention") and config.get("multi_query_group_num"):
            nkv = config["multi_query_group_num"]  # ChatGLM2/3
        if nkv is None and config.get("multi_query") is True:
            nkv = 1  # Falcon-7B style multi-query
        if nkv is None:
            nkv = nh
        hd = config_value(config, d.get("head_dim_keys", []))

    def as_int(v: Any) -> int | None:
        if isinstance(v, list):  # some GGUF files store per-layer head counts
            v = v[0] if v else None
        try:
            return int(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    return as_int(nh), as_int(nkv), as_int(hd)


def resolve(source: TensorSource) -> ModelView:
    """Work out what every needed tensor of ``source`` is; raise with the names seen if it cannot."""
    table = load_table()
    config = _text_config(source.config, table)
    declared, display = _declared(source, config)
    fam, why = _select_family(source, declared, table)
    notes: list[str] = []
    candidates = [fam] if fam is not None else list(table.families.values())
    last_error: Exception | None = None
    for cand in candidates:
        try:
            view = _build(source, cand, config, display, why, table, notes if fam is not None else [])
        except (MissingTensor, UnsupportedArchitecture) as exc:
            last_error = exc
            continue
        if fam is None:
            view = _with_note(view, f"architecture {display!r} is not in the table; tensor names matched family {cand.name!r}")
        return view
    names = source.names()
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    if fam is not None and last_error is not None:
        raise last_error
    raise UnsupportedArchitecture(
        f"{source.path}: unknown architecture {display!r}: no entry of architectures.toml resolves its "
        f"embedding and per-layer Q/K tensors. Tensors seen: {shown}"
    )


def _with_note(view: ModelView, note: str) -> ModelView:
    from dataclasses import replace

    return replace(view, notes=(*view.notes, note))


def _build(
    source: TensorSource,
    fam: Family,
    config: dict[str, Any],
    display: str,
    why: str,
    table: Table,
    notes: list[str],
) -> ModelView:
    found = _classify(source, fam, table)
    if found.embedding is None:
        raise MissingTensor(
            f"{source.path}: no token embedding found for family {fam.name!r} "
            f"(expected e.g. {fam.example_tensors[0] if fam.example_tensors else 'token_embd.weight'})"
        )
    emb_shape = source.shape(found.embedding.name)
    if len(emb_shape) != 2:
        raise MissingTensor(f"{source.path}: token embedding {found.embedding.name!r} has shape {emb_shape}, expected 2-D")
    vocab_rows, hidden = emb_shape
    blocks = sorted(set(found.q) | set(found.k) | set(found.qkv))
    n_layers_cfg = config_value(config, table.defaults.get("n_layers_keys", []))
    if source.format == "gguf":
        n_layers_cfg = source.metadata.get(f"{source.metadata.get('general.architecture', '')}.block_count", n_layers_cfg)
    if not blocks:
        raise MissingTensor(f"{source.path}: no attention Q/K tensors found for family {fam.name!r}")
    n_layers = max(blocks) + 1
    if isinstance(n_layers_cfg, int) and n_layers_cfg > n_layers:
        n_layers = n_layers_cfg
    nh, nkv, hd = _heads(source, config, table)
    layers: list[LayerRefs] = []
    for bid in range(n_layers):
        if bid in found.q and bid in found.k:
            q, k = found.q[bid], found.k[bid]
        elif bid in found.qkv:
            name, layout, transposed, how = found.qkv[bid]
            if nh is None or nkv is None:
                raise UnsupportedArchitecture(
                    f"{source.path}: fused QKV tensor {name!r} needs the head counts, but the config gives none "
                    f"(looked for {', '.join(table.defaults.get('n_heads_keys', []))})"
                )
            shape = source.shape(name)
            rows = shape[1] if transposed else shape[0]
            head_dim = infer_head_dim(rows, nh, nkv, f"{source.path}: {name}")
            if hd is None:
                hd = head_dim
            q = TensorRef(name=name, role=f"blk.{bid}.attn_q", how=how, part="q", layout=layout, transposed=transposed)
            k = TensorRef(name=name, role=f"blk.{bid}.attn_k", how=how, part="k", layout=layout, transposed=transposed)
        else:
            seen = found.by_block.get(bid, [])
            raise MissingTensor(
                f"{source.path}: layer {bid} has no attention Q and K (separate or fused) for family "
                f"{fam.name!r}; its tensors: {', '.join(seen) if seen else 'none'}"
            )
        ffn = found.ffn.get(bid, {})
        layers.append(
            LayerRefs(
                index=bid,
                q=q,
                k=k,
                up=tuple(sorted(ffn.get("up", []), key=lambda r: (r.expert is not None, r.expert or 0))),
                gate=tuple(sorted(ffn.get("gate", []), key=lambda r: (r.expert is not None, r.expert or 0))),
            )
        )
    for layer in layers:
        for ref in (layer.q, layer.k):
            shape = source.shape(ref.name)
            d_in = shape[0] if ref.transposed else (shape[1] if len(shape) == 2 else -1)
            if d_in != hidden:
                raise UnsupportedArchitecture(
                    f"{source.path}: {ref.name} has input size {d_in}, but the embedding's hidden size is {hidden}"
                )
    if hd is None and nh:
        hd = hidden // nh
    all_notes = list(notes)
    if why:
        all_notes.insert(0, f"family {fam.name!r} selected because the {why}")
    if found.ignored:
        all_notes.append(f"{found.ignored} tensor(s) of vision/audio towers or projectors ignored")
    if isinstance(n_layers_cfg, int) and n_layers_cfg != n_layers:
        all_notes.append(f"config says {n_layers_cfg} layers, the checkpoint has {n_layers}")
    return ModelView(
        path=str(source.path),
        format=source.format,
        architecture=display,
        family=fam.name,
        hidden_size=int(hidden),
        n_layers=n_layers,
        n_heads=nh,
        n_kv_heads=nkv,
        head_dim=hd,
        vocab_size=int(vocab_rows),
        embedding=found.embedding,
        layers=tuple(layers),
        notes=tuple(all_notes),
    )


def _matrix(source: TensorSource, view: ModelView, ref: TensorRef, cache: dict[str, np.ndarray]) -> np.ndarray:
    if ref.name not in cache:
        cache[ref.name] = source.read(ref.name)
    w = cache[ref.name]
    if ref.transposed:
        w = w.T
    if ref.part is None:
        return np.ascontiguousarray(w)
    assert view.n_heads is not None and view.n_kv_heads is not None and ref.layout is not None
    rows = w.shape[0]
    head_dim = infer_head_dim(rows, view.n_heads, view.n_kv_heads, ref.name)
    return split_qkv(w, ref.layout, ref.part, view.n_heads, view.n_kv_heads, head_dim, f"{source.path}: {ref.name}")


def read_attention(source: TensorSource, view: ModelView, layer: LayerRefs) -> tuple[np.ndarray, np.ndarray]:
    """Q and K of one layer as float32 ``(d_out, hidden)`` matrices (fused QKV is read once and cut)."""
    cache: dict[str, np.ndarray] = {}
    names = {layer.q.name, layer.k.name}
    cache.update(source.read_many(sorted(names)))
    q = _matrix(source, view, layer.q, cache)
    k = _matrix(source, view, layer.k, cache)
    return q, k


def read_ffn(source: TensorSource, view: ModelView, layer: LayerRefs, weight: str) -> list[tuple[int | None, np.ndarray]]:
    """FFN input projections of one layer: ``[(expert, (d_ff, hidden))]``, one entry for a dense FFN."""
    refs = layer.up if weight == "up" else layer.gate
    out: list[tuple[int | None, np.ndarray]] = []
    for ref in refs:
        w = source.read(ref.name)
        if ref.transposed:
            w = np.ascontiguousarray(w.T)
        if w.ndim == 3:  # GGUF stacks experts: (n_expert, d_ff, hidden)
            out.extend((i, np.ascontiguousarray(w[i])) for i in range(w.shape[0]))
        else:
            out.append((ref.expert, w))
    return out
