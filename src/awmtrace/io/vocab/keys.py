"""Keys, the ``Vocab`` they make, and the surface-form normalisers shared by every tokenizer reader."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from awmtrace.errors import FormatError, VocabularyError
from awmtrace.io.base import load_json, read_small_file

logger = logging.getLogger("awmtrace.io.vocab")

Key = bytes | str

# Searched in this order in a model directory (``*.tiktoken`` is a glob).
# ``tiktoken.model`` is Kimi's name for a tiktoken file.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "ice_text.model",
    "*.tiktoken",
    "tiktoken.model",
    "vocab.json",
    "vocab.txt",
)

# Small files next to a tokenizer file (not tokenizer.json, which is self-contained)
# that say which ids are added or special, and ChatGLM-6B's image-id offset.
TOKENIZER_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

# Priority of a key when two ids of one vocabulary spell the same text.
_TEXT, _FALLBACK = 0, 1

_SPACE_MARK = "\u2581"  # SentencePiece's "▁"
_HEX = frozenset("0123456789abcdefABCDEF")

# transformers' BertTokenizer defaults: a bare vocab.txt marks these special.
_BERT_SPECIALS = frozenset({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})

# ChatGLM-6B (THUDM/chatglm-6b, tokenization_chatglm.py, SPTokenizer): its
# specials, the text pieces its preprocessing substitutes for newline, tab
# and runs of 2..80 spaces, and the 20000 image-token ids that precede the
# SentencePiece ids unless tokenizer_config.json sets ``num_image_tokens``.
_CHATGLM_SPECIALS = frozenset({"[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"})
_CHATGLM_BLANK = re.compile(r"<\|blank_(\d+)\|>")
_CHATGLM_IMAGE_TOKENS = 20000

# Qwen(-1) tokenization_qwen.py: special tokens follow the 151643 ranks of
# qwen.tiktoken and live only in code: <|endoftext|>, <|im_start|>,
# <|im_end|>, then <|extra_0|> ... <|extra_204|>.
_QWEN_SPECIAL_START = 151643
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))

# A tiktoken file's first line: "<base64> <rank>" (tiktoken.load.load_tiktoken_bpe).
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+\r?(\n|$)")

# GGUF token types (gguf.TokenType, llama.cpp llama_token_type).
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Vocab:
    """Normalised vocabulary: ``keys`` maps each key to the one token id that holds it.

    ``kind`` is the surface style (``spm``, ``bytelevel``, ``wordpiece``,
    ``tiktoken``, ``plain``); ``source`` says which file (or GGUF field) it
    came from and how it was read; ``size`` is the largest id + 1;
    ``n_special`` counts the special (``str``) keys.
    """

    keys: dict[Key, int]
    kind: str
    source: str
    size: int
    n_special: int = 0

    def __len__(self) -> int:
        return len(self.keys)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _bytelevel_tables() -> tuple[dict[int, str], re.Pattern[str]]:
    """``str.translate`` table from byte-level characters to ``chr(byte)``, and a pattern of other characters."""
    table = bytes_to_unicode()
    trans = {ord(c): chr(b) for b, c in table.items()}
    other = re.compile("[^" + "".join(re.escape(c) for c in table.values()) + "]")
    return trans, other


def _bytelevel_key(piece: str) -> bytes:
    trans, other = _bytelevel_tables()
    if other.search(piece):
        # Not a byte-level piece (an added token written as plain text).
        return piece.encode("utf-8")
    return piece.translate(trans).encode("latin-1")


def _byte_token(piece: str) -> int | None:
    """NN of a SentencePiece byte piece ``<0xNN>`` (sentencepiece writes ``<0x%02X>``), else ``None``."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">") and all(c in _HEX for c in piece[3:5]):
        return int(piece[3:5], 16)
    return None


Normaliser = Callable[[str], tuple[bytes, int]]


def _spm_normaliser(marker: str = _SPACE_MARK) -> Normaliser:
    def norm(piece: str) -> tuple[bytes, int]:
        byte = _byte_token(piece)
        if byte is not None:
            return bytes([byte]), _FALLBACK
        return piece.replace(marker, " ").encode("utf-8"), _TEXT

    return norm


def _wordpiece_normaliser(prefix: str = "##") -> Normaliser:
    def norm(piece: str) -> tuple[bytes, int]:
        if prefix and piece.startswith(prefix) and len(piece) > len(prefix):
            return piece[len(prefix) :].encode("utf-8"), _TEXT
        return (" " + piece).encode("utf-8"), _TEXT

    return norm


def _bytelevel_normaliser(piece: str) -> tuple[bytes, int]:
    return _bytelevel_key(piece), _TEXT


def _plain_normaliser(piece: str) -> tuple[bytes, int]:
    return piece.encode("utf-8"), _TEXT


_Table = dict[int, tuple[Key, int]]  # token id -> (key, priority)


def _finish(table: _Table, kind: str, source: str, where: object) -> Vocab:
    """Invert ``table`` so each key keeps one id: text pieces before byte-fallback ones, then the lowest id."""
    if not table:
        raise VocabularyError(f"{where}: the vocabulary is empty; expected at least one token")
    keys: dict[Key, int] = {}
    fallback: list[tuple[int, Key]] = []
    for token_id in sorted(table):
        key, priority = table[token_id]
        if priority == _FALLBACK:
            fallback.append((token_id, key))
        elif key not in keys:
            keys[key] = token_id
    for token_id, key in fallback:
        keys.setdefault(key, token_id)
    n_special = sum(1 for k in keys if isinstance(k, str))
    vocab = Vocab(keys=keys, kind=kind, source=source, size=max(table) + 1, n_special=n_special)
    logger.debug("%s: %d tokens, %d distinct keys, %d special", source, len(table), len(keys), n_special)
    return vocab


# Token ids index embedding rows; no vocabulary comes near 2**31 and numpy index math is int64.
_MAX_TOKEN_ID = (1 << 31) - 1


def _token_id(value: Any, where: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKEN_ID:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise VocabularyError(f"{where}: {what} has id {shown}; expected an integer from 0 to {_MAX_TOKEN_ID}")
    return value


def _read_bytes(path: Path) -> bytes:
    data = read_small_file(path, "tokenizer file")
    if not data.strip():
        raise VocabularyError(f"{path}: the tokenizer file is empty")
    return data


def _read_json(path: Path, what: str) -> Any:
    try:
        return load_json(path, what)
    except FormatError as exc:
        raise VocabularyError(str(exc)) from None
