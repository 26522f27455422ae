"""From a :class:`TensorSource` to a :class:`ModelView`: which tensor is the embedding, Q, K (and FFN inputs).

Names are resolved in this order, and every decision is recorded in the
``how`` of each :class:`TensorRef`:

1. tensors under an ignored tower (vision, audio, projectors) are skipped;
2. each name is tried as it is, then with each prefix rewrite of the family
   and of ``[defaults]`` (``model.language_model.`` -> ``model.``, ...);
3. for each of those spellings, the family's own patterns in
   ``architectures.toml`` (fused QKV names gguf does not know, MoE experts,
   fused gate/up projections) come first, then ``gguf.TensorNameMap`` for the
   family's GGUF architecture.

Norm weights (gamma) are found the same way; the family says which
canonical norm roles feed attention and the FFN (``attn_norm``/``ffn_norm``,
first one present wins), whether a post-LN block reads the previous block's
output norm, and how the weight is stored (``norm_offset``: Gemma's ``1 + w``).

The family is the one the checkpoint declares (config ``architectures`` /
``model_type``, nested text configs first, or GGUF ``general.architecture``);
when several families share a declaration (ChatGLM-6B and ChatGLM2/3) each is
tried. An undeclared architecture is resolved by tensor names only when its Q
and K are separate tensors: a fused QKV layout is never guessed.

Two tensors claiming one role, a block without Q and K, or a fused tensor
whose rows do not fit the head counts are errors naming the tensors; no layer
is ever dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from awmtrace.arch.classify import Found, Fused, classify
from awmtrace.arch.qkv import infer_head_dim
from awmtrace.arch.read import read_attention, read_ffn, read_norm
from awmtrace.arch.sizes import check_sizes
from awmtrace.arch.table import Example, Family, Pattern, Table, Variant, config_value, load_table
from awmtrace.errors import AwmError, MissingTensor, UnsupportedArchitecture
from awmtrace.io.base import TensorSource
from awmtrace.types import LayerRefs, ModelView, TensorRef

__all__ = [
    "Example",
    "Family",
    "Pattern",
    "Table",
    "Variant",
    "config_value",
    "load_table",
    "read_attention",
    "read_ffn",
    "read_norm",
    "resolve",
]


def _text_config(config: dict[str, Any], table: Table) -> dict[str, Any]:
    """The language model's config: the top level, overlaid by a nested text config when present."""
    keys = table.defaults.get("text_config_keys", [])
    for key in keys:
        inner = config.get(key)
        if isinstance(inner, dict):
            merged = {k: v for k, v in config.items() if k not in keys}
            merged.update(inner)
            return merged
    return config


def _declared(source: TensorSource, table: Table) -> list[str]:
    """Architecture names the checkpoint declares, most specific first (a nested text config before its wrapper)."""
    if source.format == "gguf":
        arch = str(source.metadata.get("general.architecture", ""))
        return [arch] if arch else []
    names: list[str] = []
    configs = [source.config.get(k) for k in table.defaults.get("text_config_keys", [])]
    for cfg in [*(c for c in configs if isinstance(c, dict)), source.config]:
        archs = cfg.get("architectures")
        if isinstance(archs, list):
            names.extend(str(a) for a in archs)
        if isinstance(cfg.get("model_type"), str):
            names.append(cfg["model_type"])
    return list(dict.fromkeys(names))


def _declared_families(source: TensorSource, declared: list[str], table: Table) -> list[tuple[Family, str]]:
    out: dict[str, tuple[Family, str]] = {}
    for name in declared:
        for fam in table.families.values():
            if fam.name in out:
                continue
            if source.format == "gguf":
                if name in fam.gguf_names:
                    out[fam.name] = (fam, f"GGUF general.architecture={name!r}")
            elif name in fam.architectures or name in fam.model_types:
                out[fam.name] = (fam, f"config declares {name!r}")
    return list(out.values())


def _as_int(v: Any) -> int | None:
    if isinstance(v, list):  # some GGUF files store per-layer head counts
        v = v[0] if v else None
    if isinstance(v, bool):
        return None
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class _Heads:
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None
    kv_explicit: bool  # the KV head count was stated (config key, variant or GGUF metadata), not defaulted


def _heads(source: TensorSource, config: dict[str, Any], table: Table, variant: Variant | None) -> _Heads:
    d = table.defaults
    if source.format == "gguf":
        arch = source.metadata.get("general.architecture", "")
        nh = _as_int(source.metadata.get(f"{arch}.attention.head_count"))
        nkv_meta = _as_int(source.metadata.get(f"{arch}.attention.head_count_kv"))
        hd = _as_int(source.metadata.get(f"{arch}.attention.key_length"))
        return _Heads(nh, nkv_meta if nkv_meta is not None else nh, hd, nkv_meta is not None)
    nh = _as_int(config_value(config, d.get("n_heads_keys", [])))
    hd = _as_int(config_value(config, d.get("head_dim_keys", [])))
    nkv: int | None = None
    explicit = True
    if variant is not None and variant.n_kv_heads is not None:
        nkv = nh if variant.n_kv_heads == "n_heads" else int(variant.n_kv_heads)
    else:
        keys = list(variant.n_kv_heads_keys) if variant is not None and variant.n_kv_heads_keys else d.get("n_kv_heads_keys", [])
        nkv = _as_int(config_value(config, keys))
        if nkv is None:
            nkv, explicit = nh, False
    return _Heads(nh, nkv, hd, explicit)


def _rows(source: TensorSource, name: str, transposed: bool) -> int:
    shape = source.shape(name)
    return int(shape[1] if transposed else shape[0]) if len(shape) == 2 else -1


def resolve(source: TensorSource) -> ModelView:
    """Work out what every needed tensor of ``source`` is; raise with the names seen if it cannot."""
    table = load_table()
    config = _text_config(source.config, table)
    declared = _declared(source, table)
    display = declared[0] if declared else "unknown"
    candidates = _declared_families(source, declared, table)
    if candidates:
        attempts: list[tuple[int, AwmError]] = []
        for fam, why in candidates:
            try:
                return _build(source, fam, config, display, why, table)
            except (MissingTensor, UnsupportedArchitecture) as exc:
                attempts.append((getattr(exc, "recognised", 0), exc))
        # The family that recognised most of the checkpoint explains its failure best.
        raise max(attempts, key=lambda a: a[0])[1]
    fused_fit: list[str] = []
    for fam in table.families.values():
        try:
            view = _build(source, fam, config, display, "", table)
        except (MissingTensor, UnsupportedArchitecture):
            continue
        if any(layer.q.part is not None for layer in view.layers):
            fused_fit.append(f"{fam.name} ({view.layers[0].q.name})")
            continue
        return _with_note(view, f"architecture {display!r} is not in the table; its tensor names match family {fam.name!r}")
    names = source.names()
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    if fused_fit:
        raise UnsupportedArchitecture(
            f"{source.path}: architecture {display!r} is not in architectures.toml and its attention is a fused "
            f"QKV tensor whose names fit {', '.join(fused_fit)}; the packing of Q, K and V cannot be known from "
            "names and shapes. Declare the architecture (config.json 'architectures' / 'model_type') or add a family"
        )
    raise UnsupportedArchitecture(
        f"{source.path}: unknown architecture {display!r}: no entry of architectures.toml resolves its "
        f"embedding and per-layer Q/K tensors. Tensors seen: {shown}"
    )


def _with_note(view: ModelView, note: str) -> ModelView:
    return replace(view, notes=(*view.notes, note))


def _expert_order(ref: TensorRef) -> tuple[bool, int]:
    """Dense FFN first, then shared (-1) and routed experts by number."""
    return (ref.expert is not None, ref.expert if ref.expert is not None else 0)


def _fail(exc: AwmError, found: Found) -> AwmError:
    exc.recognised = found.recognised  # type: ignore[attr-defined]
    return exc


def _size_keys(table: Table) -> list[str]:
    """Config keys holding layer, hidden and head counts, each checked to be a positive whole number."""
    groups = ("n_layers_keys", "n_heads_keys", "n_kv_heads_keys", "head_dim_keys")
    keys = [k for group in groups for k in table.defaults.get(group, [])]
    return [*keys, "hidden_size", "n_embd", "d_model", "vocab_size"]


def _build(source: TensorSource, fam: Family, config: dict[str, Any], display: str, why: str, table: Table) -> ModelView:
    """The view of ``source`` as family ``fam``; raises (with how much was recognised) when it does not fit."""
    variant = fam.variant(config) if source.format != "gguf" else None
    found = classify(source, fam, table, variant)
    if found.problems:
        raise _fail(found.problems[0], found)
    embedding, vocab_rows, hidden = _embedding(source, fam, found)
    check_sizes(source, config, _size_keys(table), (vocab_rows, hidden))
    n_layers, n_layers_cfg = _layer_count(source, config, table, fam, found)
    notes = _drop_ambiguous_ffn(found)
    heads = _heads(source, config, table, variant)
    layers, hd = _layer_refs(source, fam, table, found, heads, n_layers)
    _check_input_sizes(source, layers, hidden, found)
    hd, nkv = _heads_from_shapes(source, layers[0], heads, hd, hidden, notes)
    layers, norm_notes = _attach_norms(fam, found, layers)
    notes.extend(norm_notes)
    all_notes: list[str] = []
    if variant is not None and variant.why and any(layer.q.part is not None for layer in layers):
        all_notes.append(f"{fam.name}: {variant.why}")
    all_notes.extend(notes)
    if found.ignored:
        all_notes.append(f"{found.ignored} tensor(s) of vision/audio towers or projectors ignored")
    if n_layers_cfg is not None and n_layers_cfg != n_layers:
        all_notes.append(f"config says {n_layers_cfg} layers, the checkpoint has {n_layers}")
    return ModelView(
        path=str(source.path),
        format=source.format,
        architecture=display,
        family=fam.name,
        hidden_size=hidden,
        n_layers=n_layers,
        n_heads=heads.n_heads,
        n_kv_heads=nkv,
        head_dim=hd,
        vocab_size=vocab_rows,
        embedding=embedding,
        layers=tuple(layers),
        notes=tuple(all_notes),
        family_reason=f"the {why}" if why else "",
        norm_kind=fam.norm_kind,
        # llama.cpp's converters add Gemma's 1 to the stored norm weights, so GGUF files need no offset.
        norm_offset=fam.norm_offset if source.format != "gguf" else 0.0,
    )


def _embedding(source: TensorSource, fam: Family, found: Found) -> tuple[TensorRef, int, int]:
    """The token embedding and its ``(vocab rows, hidden size)``."""
    where = str(source.path)
    if found.embedding is None:
        expected = fam.example_tensors[0] if fam.example_tensors else "token_embd.weight"
        raise _fail(MissingTensor(f"{where}: no token embedding found for family {fam.name!r} (expected e.g. {expected})"), found)
    shape = source.shape(found.embedding.name)
    if len(shape) != 2:
        raise _fail(MissingTensor(f"{where}: token embedding {found.embedding.name!r} has shape {shape}, expected 2-D"), found)
    return found.embedding, int(shape[0]), int(shape[1])


def _layer_count(source: TensorSource, config: dict[str, Any], table: Table, fam: Family, found: Found) -> tuple[int, int | None]:
    """Layers to resolve (the config's count when it promises more than the names show), and the config's count."""
    blocks = sorted(set(found.q) | set(found.k) | set(found.qkv))
    declared = config_value(config, table.defaults.get("n_layers_keys", []))
    if source.format == "gguf":
        declared = source.metadata.get(f"{source.metadata.get('general.architecture', '')}.block_count", declared)
    n_layers_cfg = _as_int(declared)
    if not blocks:
        held = found.by_block.get(min(found.by_block), []) if found.by_block else []
        raise _fail(
            MissingTensor(
                f"{source.path}: no attention Q/K tensors found for family {fam.name!r}"
                + (f"; the first layer holds: {', '.join(held)}" if held else "")
            ),
            found,
        )
    n_layers = max(blocks) + 1
    return (max(n_layers, n_layers_cfg) if n_layers_cfg is not None else n_layers), n_layers_cfg


def _drop_ambiguous_ffn(found: Found) -> list[str]:
    notes = []
    for (bid, part), (one, other) in sorted(found.ffn_ambiguous.items()):
        found.ffn.get(bid, {}).pop(part, None)
        notes.append(f"layer {bid}: {one} and {other} both look like its FFN {part} projection; no FFN {part} score there")
    return notes


def _layer_refs(
    source: TensorSource, fam: Family, table: Table, found: Found, heads: _Heads, n_layers: int
) -> tuple[list[LayerRefs], int | None]:
    """Q, K and FFN inputs of every layer, and the head size (a fused QKV tensor fixes it)."""
    hd = heads.head_dim
    layers: list[LayerRefs] = []
    for bid in range(n_layers):
        if bid in found.q and bid in found.k:
            q, k = found.q[bid], found.k[bid]
        elif bid in found.qkv and not (bid in found.q or bid in found.k):
            q, k, hd = _cut_fused(source, table, found, found.qkv[bid], bid, heads, hd)
        else:
            seen = found.by_block.get(bid, [])
            raise _fail(
                MissingTensor(
                    f"{source.path}: layer {bid} has no attention Q and K (separate or fused) for family "
                    f"{fam.name!r}; its tensors: {', '.join(seen) if seen else 'none'}"
                ),
                found,
            )
        ffn = found.ffn.get(bid, {})
        up, gate = (tuple(sorted(ffn.get(w, []), key=_expert_order)) for w in ("up", "gate"))
        layers.append(LayerRefs(index=bid, q=q, k=k, up=up, gate=gate))
    return layers, hd


def _cut_fused(
    source: TensorSource, table: Table, found: Found, fused: Fused, bid: int, heads: _Heads, hd: int | None
) -> tuple[TensorRef, TensorRef, int]:
    """Q and K refs into a fused QKV tensor, and the head size its rows give with the head counts."""
    where, nh, nkv = str(source.path), heads.n_heads, heads.n_kv_heads
    if nh is None or nkv is None:
        keys = ", ".join(table.defaults.get("n_heads_keys", []))
        raise _fail(
            UnsupportedArchitecture(
                f"{where}: fused QKV tensor {fused.name!r} can only be cut with the head counts, but "
                f"the {'GGUF metadata' if source.format == 'gguf' else 'config'} gives none "
                f"(looked for {keys}); add them to config.json"
            ),
            found,
        )
    rows = _rows(source, fused.name, fused.transposed)
    fused_hd = infer_head_dim(rows, nh, nkv, f"{where}: {fused.name}")
    if hd is not None and hd != fused_hd:
        raise _fail(
            UnsupportedArchitecture(
                f"{where}: fused QKV tensor {fused.name!r} has {rows} rows = (n_heads {nh} + 2 * n_kv_heads "
                f"{nkv}) * {fused_hd}, but the config says head_dim {hd}; the head counts do not fit"
            ),
            found,
        )
    q, k = (
        TensorRef(fused.name, f"blk.{bid}.attn_{part}", fused.how, part=part, layout=fused.layout, transposed=fused.transposed)
        for part in ("q", "k")
    )
    return q, k, fused_hd


def _check_input_sizes(source: TensorSource, layers: list[LayerRefs], hidden: int, found: Found) -> None:
    conv1d = " (Conv1D, stored transposed)"
    for layer in layers:
        for ref in (layer.q, layer.k):
            shape = source.shape(ref.name)
            d_in = (shape[0] if ref.transposed else shape[1]) if len(shape) == 2 else -1
            if d_in != hidden:
                raise _fail(
                    UnsupportedArchitecture(
                        f"{source.path}: {ref.name} has shape {tuple(shape)}{conv1d if ref.transposed else ''}; "
                        f"its input size is not the embedding's hidden size {hidden}"
                    ),
                    found,
                )


def _heads_from_shapes(
    source: TensorSource, first: LayerRefs, heads: _Heads, hd: int | None, hidden: int, notes: list[str]
) -> tuple[int | None, int | None]:
    """``(head_dim, n_kv_heads)``: separate Q and K give them by their rows (K's rows win over the config, noted)."""
    nh, nkv = heads.n_heads, heads.n_kv_heads
    if first.q.part is None and nh:
        q_rows, k_rows = (_rows(source, ref.name, ref.transposed) for ref in (first.q, first.k))
        if hd is None and q_rows % nh == 0:
            hd = q_rows // nh
        if hd and k_rows % hd == 0:
            shape_kv = k_rows // hd
            if heads.kv_explicit and nkv is not None and nkv != shape_kv:
                notes.append(
                    f"the config gives {nkv} KV heads, but {first.k.name} has {k_rows} rows = {shape_kv} heads of {hd}; using {shape_kv}"
                )
            nkv = shape_kv
    if hd is None and nh:
        hd = hidden // nh
    return hd, nkv


def _first_norm(found: Found, bid: int | None, roles: tuple[str, ...]) -> TensorRef | None:
    held = found.norms.get(bid, {})
    return next((held[r] for r in roles if r in held), None)


def _attach_norms(fam: Family, found: Found, layers: list[LayerRefs]) -> tuple[list[LayerRefs], list[str]]:
    """Set each layer's ``attn_norm``/``ffn_norm`` from the family's roles; notes for ambiguous or missing ones.

    Pre-LN: the block's own roles. Post-LN (BERT): attention reads the
    previous block's output norm, block 0 the embedding norm. A parallel
    block lists ``attn_norm`` among its FFN roles, so both share one tensor.
    """
    notes = []
    for (role, bid), (one, other) in sorted(found.norm_ambiguous.items(), key=str):
        found.norms.get(bid, {}).pop(role, None)
        notes.append(f"{one} and {other} both look like {role} of layer {bid}; that norm is not folded")
    if fam.norm_kind == "none":
        return layers, notes
    out = []
    for layer in layers:
        bid = layer.index
        if fam.norm_placement == "post":
            attn = _first_norm(found, None, ("token_embd_norm",)) if bid == 0 else _first_norm(found, bid - 1, fam.attn_norm)
        else:
            attn = _first_norm(found, bid, fam.attn_norm)
        out.append(replace(layer, attn_norm=attn, ffn_norm=_first_norm(found, bid, fam.ffn_norm)))
    missing = [layer.index for layer in out if layer.attn_norm is None]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        notes.append(
            f"family {fam.name!r} has {fam.norm_kind} norm gains, but no attention norm tensor was found for "
            f"{len(missing)} layer(s) ({shown}); their Q/K are scored without folding a gain"
        )
    return out, notes
