"""``architectures.toml``, parsed and validated strictly into frozen records.

Every key the file may hold is listed here with its type; an unknown key, a
value of the wrong type, or an unknown role, layout or norm kind is a
``ValueError`` naming the entry, so a typo in the table fails the test-suite
instead of being silently ignored.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from gguf import MODEL_ARCH

from awmtrace.arch.names import gguf_arch
from awmtrace.arch.qkv import LAYOUTS

__all__ = [
    "Example",
    "Family",
    "GATE_UP_ORDERS",
    "NORM_KINDS",
    "NORM_PLACEMENTS",
    "NORM_ROLES",
    "PATTERN_ROLES",
    "Pattern",
    "Table",
    "Variant",
    "config_value",
    "load_table",
    "parse_table",
]

#: Canonical (GGUF) roles of the norm weights a family may name as feeding attention or the FFN.
NORM_ROLES = ("attn_norm", "attn_norm_2", "ffn_norm", "token_embd_norm", "attn_output_norm", "layer_output_norm")
NORM_KINDS = ("rms", "layer", "none")
NORM_PLACEMENTS = ("pre", "post")
PATTERN_ROLES = ("token_embd", "attn_q", "attn_k", "attn_qkv", "ffn_up", "ffn_gate", "ffn_gate_up", *NORM_ROLES)
GATE_UP_ORDERS = ("gate_up", "up_gate")


def config_value(config: dict[str, Any], keys: list[str] | tuple[str, ...]) -> Any:
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


@dataclass(frozen=True)
class Pattern:
    """One ``tensors`` entry of a family: a name template and what it is."""

    template: str
    regex: re.Pattern[str]
    role: str
    layout: str | None = None
    transposed: bool = False
    order: str | None = None  # ffn_gate_up: which half comes first
    shared_expert: bool = False


@dataclass(frozen=True)
class Variant:
    """A config-dependent QKV layout / KV head count; applies when every ``when`` key equals the config's value."""

    when: dict[str, Any]
    qkv_layout: str | None = None
    n_kv_heads: int | str | None = None  # an integer, or "n_heads"
    n_kv_heads_keys: tuple[str, ...] = ()
    why: str = ""

    def matches(self, config: dict[str, Any]) -> bool:
        return all(config_value(config, [key]) == value for key, value in self.when.items())


@dataclass(frozen=True)
class Example:
    """A minimal real checkpoint of a family: its config and every tensor name (``{bid}``/``{xid}`` templates)."""

    id: str
    config: dict[str, Any]
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    name: str
    gguf_arch: MODEL_ARCH
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    gguf_names: tuple[str, ...]
    qkv_layout: str | None
    gguf_qkv_layout: str | None
    hf_transposed: frozenset[str]
    prefix_rewrites: tuple[tuple[str, str], ...]
    patterns: tuple[Pattern, ...]
    variants: tuple[Variant, ...]
    source: str
    examples: tuple[Example, ...] = ()
    norm_kind: str = "none"  # "rms" | "layer" | "none"
    norm_offset: float = 0.0  # Hugging Face storage: effective gain = offset + stored weight
    attn_norm: tuple[str, ...] = ()  # canonical roles feeding attention, first present wins
    ffn_norm: tuple[str, ...] = ()  # ... and the FFN
    norm_placement: str = "pre"  # "post": block i's attention reads block i-1's attn_norm role (block 0: token_embd_norm)

    @property
    def example_config(self) -> dict[str, Any]:
        return self.examples[0].config if self.examples else {}

    @property
    def example_tensors(self) -> tuple[str, ...]:
        return self.examples[0].tensors if self.examples else ()

    def variant(self, config: dict[str, Any]) -> Variant | None:
        return next((v for v in self.variants if v.matches(config)), None)


@dataclass(frozen=True)
class Table:
    defaults: dict[str, Any]
    families: dict[str, Family]


# Value checks: each returns whether a TOML value has the expected type.
def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _pairs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x) for x in v)


def _table(v: Any) -> bool:
    return isinstance(v, dict)


def _tables(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


def _kv_heads(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or v == "n_heads"


Spec = dict[str, Callable[[Any], bool]]

_DEFAULTS: Spec = {
    "prefix_rewrites": _pairs,
    "ignore_prefixes": _strs,
    "n_layers_keys": _strs,
    "n_heads_keys": _strs,
    "n_kv_heads_keys": _strs,
    "head_dim_keys": _strs,
    "text_config_keys": _strs,
    "attn_norm": _strs,
    "ffn_norm": _strs,
}
_FAMILY: Spec = {
    "gguf_arch": _str,
    "architectures": _strs,
    "model_types": _strs,
    "gguf_names": _strs,
    "qkv_layout": _str,
    "gguf_qkv_layout": _str,
    "hf_transposed": _strs,
    "prefix_rewrites": _pairs,
    "tensors": _tables,
    "variants": _tables,
    "source": _str,
    "examples": _tables,
    "norm": _str,
    "norm_offset": _number,
    "attn_norm": _strs,
    "ffn_norm": _strs,
    "norm_placement": _str,
}
_PATTERN: Spec = {"pattern": _str, "role": _str, "layout": _str, "transposed": _bool, "order": _str, "shared_expert": _bool}
_VARIANT: Spec = {"when": _table, "qkv_layout": _str, "n_kv_heads": _kv_heads, "n_kv_heads_keys": _strs, "why": _str}
_EXAMPLE: Spec = {"id": _str, "config": _table, "tensors": _strs}


def _check(where: str, entry: dict[str, Any], spec: Spec, required: tuple[str, ...] = ()) -> None:
    """Unknown keys, missing required keys and values of the wrong type are errors naming ``where``."""
    unknown = sorted(set(entry) - set(spec))
    if unknown:
        raise ValueError(f"architectures.toml {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(spec)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ValueError(f"architectures.toml {where}: missing required key(s) {', '.join(missing)}")
    for key, value in entry.items():
        if not spec[key](value):
            raise ValueError(f"architectures.toml {where}: {key} = {value!r} has the wrong type ({spec[key].__name__.strip('_')})")


def _one_of(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"architectures.toml {where}: {key} = {value!r}; expected one of {', '.join(allowed)}")


def _compile(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")
    return re.compile(f"^{escaped}$")


def _parse_pattern(where: str, p: dict[str, Any]) -> Pattern:
    where = f"{where} pattern {p.get('pattern')!r}"
    _check(where, p, _PATTERN, ("pattern", "role"))
    role, order = p["role"], p.get("order")
    _one_of(where, "role", role, PATTERN_ROLES)
    _one_of(where, "layout", p.get("layout"), LAYOUTS)
    _one_of(where, "order", order, GATE_UP_ORDERS)
    if (role == "ffn_gate_up") != (order is not None):
        raise ValueError(f"architectures.toml {where}: order (one of {GATE_UP_ORDERS}) goes with role ffn_gate_up, and only there")
    return Pattern(
        template=p["pattern"],
        regex=_compile(p["pattern"]),
        role=role,
        layout=p.get("layout"),
        transposed=p.get("transposed", False),
        order=order,
        shared_expert=p.get("shared_expert", False),
    )


def _parse_variant(where: str, v: dict[str, Any]) -> Variant:
    where = f"{where} variant {v.get('why', '')!r}"
    _check(where, v, _VARIANT)
    _one_of(where, "qkv_layout", v.get("qkv_layout"), LAYOUTS)
    return Variant(
        when=dict(v.get("when", {})),
        qkv_layout=v.get("qkv_layout"),
        n_kv_heads=v.get("n_kv_heads"),
        n_kv_heads_keys=tuple(v.get("n_kv_heads_keys", ())),
        why=v.get("why", ""),
    )


def _parse_example(where: str, e: dict[str, Any]) -> Example:
    _check(f"{where} example {e.get('id')!r}", e, _EXAMPLE, ("id", "tensors"))
    return Example(id=e["id"], config=dict(e.get("config", {})), tensors=tuple(e["tensors"]))


def _parse_norms(where: str, entry: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The norm fields of a family (``norm`` is required: every family states what feeds its attention)."""
    kind = entry["norm"]
    _one_of(where, "norm", kind, NORM_KINDS)
    _one_of(where, "norm_placement", entry.get("norm_placement"), NORM_PLACEMENTS)
    roles: dict[str, tuple[str, ...]] = {}
    for key in ("attn_norm", "ffn_norm"):
        value = entry.get(key, defaults.get(key, []) if kind != "none" else [])
        for role in value:
            _one_of(where, key, role, NORM_ROLES)
        roles[key] = tuple(value)
    return {
        "norm_kind": kind,
        "norm_offset": float(entry.get("norm_offset", 0.0)),
        "norm_placement": entry.get("norm_placement", "pre"),
        **roles,
    }


def _parse_family(name: str, entry: dict[str, Any], defaults: dict[str, Any]) -> Family:
    where = f"[families.{name}]"
    _check(where, entry, _FAMILY, ("gguf_arch", "norm", "source"))
    for key in ("qkv_layout", "gguf_qkv_layout"):
        _one_of(where, key, entry.get(key), LAYOUTS)
    for role in entry.get("hf_transposed", ()):
        _one_of(where, "hf_transposed", role, PATTERN_ROLES)
    try:
        arch = gguf_arch(entry["gguf_arch"])
    except KeyError as exc:
        raise ValueError(f"architectures.toml {where}: gguf_arch = {entry['gguf_arch']!r} is not a gguf MODEL_ARCH") from exc
    return Family(
        name=name,
        gguf_arch=arch,
        architectures=tuple(entry.get("architectures", ())),
        model_types=tuple(entry.get("model_types", ())),
        gguf_names=tuple(entry.get("gguf_names", ())),
        qkv_layout=entry.get("qkv_layout"),
        gguf_qkv_layout=entry.get("gguf_qkv_layout"),
        hf_transposed=frozenset(entry.get("hf_transposed", ())),
        prefix_rewrites=tuple((a, b) for a, b in entry.get("prefix_rewrites", ())),
        patterns=tuple(_parse_pattern(where, p) for p in entry.get("tensors", [])),
        variants=tuple(_parse_variant(where, v) for v in entry.get("variants", [])),
        source=entry["source"],
        examples=tuple(_parse_example(where, e) for e in entry.get("examples", [])),
        **_parse_norms(where, entry, defaults),
    )


def parse_table(text: str) -> Table:
    """Parse and validate the text of an ``architectures.toml``; a malformed entry is a ``ValueError`` naming it."""
    data = tomllib.loads(text)
    _check("(top level)", data, {"defaults": _table, "families": _table}, ("defaults", "families"))
    defaults = data["defaults"]
    _check("[defaults]", defaults, _DEFAULTS)
    for key in ("attn_norm", "ffn_norm"):
        for role in defaults.get(key, ()):
            _one_of("[defaults]", key, role, NORM_ROLES)
    families: dict[str, Family] = {}
    for name, entry in data["families"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"architectures.toml [families.{name}]: expected a table, got {entry!r}")
        families[name] = _parse_family(name, entry, defaults)
    return Table(defaults=defaults, families=families)


@lru_cache(maxsize=1)
def load_table() -> Table:
    """The packaged ``architectures.toml``, parsed once (see :func:`parse_table`)."""
    return parse_table((resources.files("awmtrace.arch") / "architectures.toml").read_text(encoding="utf-8"))
