"""transformers' files next to a tokenizer: added tokens and which strings are special."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awmtrace.errors import FormatError
from awmtrace.io.base import is_regular_file, load_json
from awmtrace.io.vocab.keys import (
    _MAX_TOKEN_ID,
    _TEXT,
    _Table,
    logger,
)


@dataclass
class _Sidecars:
    """What transformers keeps next to a tokenizer file: added tokens and which strings are special."""

    added: dict[int, tuple[str, bool]]  # id -> (content, special)
    special_names: set[str]
    config: dict[str, Any]


def _special_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict) and isinstance(value.get("content"), str):
        yield value["content"]
    elif isinstance(value, list):
        for item in value:
            yield from _special_strings(item)


_SPECIAL_FIELDS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "additional_special_tokens")


def _read_sidecars(folder: Path) -> _Sidecars:
    """``tokenizer_config.json`` (``added_tokens_decoder``), ``added_tokens.json``, ``special_tokens_map.json``.

    They only refine a vocabulary (extra ids, which tokens are special), so a
    malformed one is logged and skipped rather than fatal.
    """
    out = _Sidecars(added={}, special_names=set(), config={})

    def load(name: str) -> Any:
        p = folder / name
        if not is_regular_file(p, name):
            return None
        try:
            return load_json(p, name)
        except FormatError as exc:
            logger.warning("ignored, unreadable: %s", exc)
            return None

    config = load("tokenizer_config.json")
    if isinstance(config, dict):
        out.config = config
        for name in _SPECIAL_FIELDS:
            out.special_names.update(_special_strings(config.get(name)))
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for token_id, tok in decoder.items():
                number = str(token_id)
                if isinstance(tok, dict) and isinstance(tok.get("content"), str) and number.isascii() and number.isdigit():
                    if int(number) <= _MAX_TOKEN_ID:
                        out.added[int(number)] = (tok["content"], bool(tok.get("special")))
    smap = load("special_tokens_map.json")
    if isinstance(smap, dict):
        for name in _SPECIAL_FIELDS:
            out.special_names.update(_special_strings(smap.get(name)))
    added = load("added_tokens.json")
    if isinstance(added, dict):
        for content, token_id in added.items():
            if (
                isinstance(token_id, int)
                and not isinstance(token_id, bool)
                and 0 <= token_id <= _MAX_TOKEN_ID
                and token_id not in out.added
            ):
                out.added[token_id] = (content, content in out.special_names)
    return out


def _apply_added(table: _Table, sidecars: _Sidecars) -> None:
    for token_id, (content, special) in sidecars.added.items():
        table[token_id] = (content, _TEXT) if special or content in sidecars.special_names else (content.encode("utf-8"), _TEXT)
