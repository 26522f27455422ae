"""Sizes a checkpoint declares (layer, head and hidden counts) checked before anything is computed from them.

A config.json or GGUF header with zero, negative, fractional or overflowing
sizes is damaged or hostile; using it would divide by zero, index with a
negative head size, or silently fall back to guesses. Every declared size
must be a positive integer below :data:`MAX_SIZE`; per-layer lists (some GGUF
files store head counts per layer, 0 for layers without attention) may hold
zeros but nothing negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from awmtrace.errors import FormatError
from awmtrace.io.base import TensorSource

__all__ = ["check_sizes", "MAX_SIZE"]

#: No real layer, head or hidden count comes near this; larger values overflow int32 index math.
MAX_SIZE = 1 << 31

# GGUF keys under "{arch}." that hold sizes.
_GGUF_KEYS = (
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "vocab_size",
)


def _problem(value: Any, allow_zero: bool) -> str | None:
    """Why ``value`` is not a usable size (``None`` when it is, or when it is not a number at all)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "not finite"
        if not value.is_integer():
            return "not a whole number"
        value = int(value)
    if not isinstance(value, int):
        return None  # strings and objects are not sizes; readers ignore them
    if value < 0 or (value == 0 and not allow_zero):
        return "zero" if value == 0 else "negative"
    if value >= MAX_SIZE:
        return f"larger than {MAX_SIZE - 1}"
    return None


def _check(value: Any, key: str, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        why = _problem(item, allow_zero=isinstance(value, list))
        if why is not None:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise FormatError(
                f"{where} says {key} = {shown}, which is {why}; expected a positive integer. The file is damaged or not a real model"
            )


def check_sizes(source: TensorSource, config: dict[str, Any], config_keys: Iterable[str], embedding_shape: tuple[int, ...]) -> None:
    """Refuse declared sizes that no model has, naming the file, the key and the value.

    ``config_keys``: the config.json keys (dotted for nested ones) that hold
    layer, hidden and head counts; ``embedding_shape``: the token embedding's
    ``(vocab, hidden)`` shape, whose sides must not be empty.
    """
    if source.format == "gguf":
        arch = str(source.metadata.get("general.architecture", ""))
        for key in _GGUF_KEYS:
            full = f"{arch}.{key}"
            if full in source.metadata:
                _check(source.metadata[full], full, f"{source.path}: the GGUF metadata")
    else:
        for key in config_keys:
            node: Any = config
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                _check(node, key, str(source.path / "config.json" if source.path.is_dir() else source.path.parent / "config.json"))
    if any(int(d) <= 0 for d in embedding_shape):
        raise FormatError(f"{source.path}: the token embedding has shape {tuple(embedding_shape)}; an empty side leaves nothing to compare")
