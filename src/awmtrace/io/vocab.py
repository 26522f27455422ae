"""Vocabularies, normalised so the same text piece matches across tokenizer styles.

Every token becomes a *key*: the raw bytes of the text it stands for, or, for
special tokens (control, unknown, ``special`` added tokens), their literal
string. A ``str`` key never equals a ``bytes`` key, so ``<s>`` the special
token only matches another tokenizer's special ``<s>``, never the text ``<s>``.
The surface forms undone:

* SentencePiece (``tokenizer.model``, ``ice_text.model``, Unigram or
  Metaspace/byte-fallback ``tokenizer.json``, GGUF ``llama``/``t5``): the
  space marker (``▁``, or the Metaspace ``replacement``) is a space, ``<0xNN>``
  is the single byte NN;
* byte-level BPE (GPT-2 style ``tokenizer.json``/``vocab.json``, GGUF ``gpt2``):
  each character maps back to its byte through GPT-2's byte-to-unicode table
  (``Ġ`` is a space, ``Ċ`` a newline), so a piece may be invalid UTF-8;
* WordPiece (``vocab.txt``, WordPiece ``tokenizer.json``): a word-initial
  piece ``x`` follows a space, as SentencePiece's ``▁x`` does, so it is
  `` x``; a continuation ``##x`` is ``x``. GGUF ``bert`` vocabularies were
  already rewritten that way by llama.cpp (``x`` -> ``▁x``, ``##x`` -> ``x``);
* tiktoken files (``*.tiktoken``, Qwen's ``qwen.tiktoken``, GLM-4's
  tiktoken-format ``tokenizer.model``): the base64-decoded bytes.

Within one vocabulary every key keeps one id: the lowest id among text
pieces, and a byte-fallback piece ``<0xNN>`` only when no text piece spells
the same byte (the text piece is the one the tokenizer emits, so it is the
trained row). Placeholder tokens (GGUF/SentencePiece ``unused``) have no key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import FormatError, InputNotFound, VocabularyError, first_line
from awmtrace.io.base import TensorSource, is_regular_file, load_json, read_small_file

__all__ = [
    "Vocab",
    "load_vocab",
    "vocab_for",
    "vocab_from_gguf",
    "find_tokenizer_file",
    "shared_tokens",
    "bytes_to_unicode",
    "TOKENIZER_FILES",
    "TOKENIZER_SIDECARS",
]

logger = logging.getLogger(__name__)

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


def _component_types(*nodes: Any) -> set[str]:
    """Every ``type`` value in nested tokenizer.json components (``Sequence`` members included)."""
    found: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _space_marker(raw: dict[str, Any]) -> str | None:
    """The character a SentencePiece-style tokenizer.json writes for a space, if it declares one.

    ``Metaspace`` pre-tokenizers/decoders carry it as ``replacement`` (whatever
    their ``prepend_scheme``: that only decides whether the first word gets a
    marker, not what the marker means); Llama-style files instead normalise
    ``Replace(" " -> "▁")`` and decode ``Replace("▁" -> " ")``.
    """
    stack: list[Any] = [raw.get("normalizer"), raw.get("pre_tokenizer"), raw.get("decoder")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "Metaspace":
            rep = node.get("replacement", node.get("str_rep", _SPACE_MARK))
            if isinstance(rep, str) and len(rep) == 1:
                return rep
        elif kind == "Replace":
            pattern = node.get("pattern")
            text = pattern.get("String") if isinstance(pattern, dict) else None
            content = node.get("content")
            if text == " " and isinstance(content, str) and len(content) == 1:
                return content
            if content == " " and isinstance(text, str) and len(text) == 1:
                return text
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return None


def _model_type(model: dict[str, Any]) -> str:
    """``model.type``, or what old files (tokenizers < 0.11 wrote none) imply by their fields."""
    mtype = model.get("type")
    if isinstance(mtype, str):
        return mtype
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    if "merges" in model:
        return "BPE"
    if "max_input_chars_per_word" in model:
        return "WordPiece"
    return "WordLevel"


def _from_tokenizer_json(path: Path) -> Vocab:  # noqa: C901 - one branch per tokenizer.json model type
    raw = _read_json(path, "tokenizer.json")
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise VocabularyError(f"{path}: tokenizer.json has no 'model' object; expected a file written by the tokenizers library")
    mtype = _model_type(model)
    vocab = model.get("vocab")
    pieces: dict[int, str] = {}
    try:
        if isinstance(vocab, dict):
            for piece, token_id in vocab.items():
                pieces[_token_id(token_id, path, f"token {piece!r}")] = piece
        elif isinstance(vocab, list):
            for token_id, item in enumerate(vocab):
                piece = item[0] if isinstance(item, list) else item
                if not isinstance(piece, str):
                    raise VocabularyError(f"{path}: Unigram vocab entry {token_id} is {item!r}; expected [piece, score]")
                pieces[token_id] = piece
        else:
            raise VocabularyError(f"{path}: tokenizer.json model ({mtype}) has no vocab")
    except (IndexError, TypeError, AttributeError):
        raise VocabularyError(f"{path}: tokenizer.json model vocab is malformed") from None

    types = _component_types(raw.get("normalizer"), raw.get("pre_tokenizer"), raw.get("decoder"))
    marker = _space_marker(raw)
    prefix = model.get("continuing_subword_prefix")
    norm: Normaliser
    if mtype == "WordPiece" or "WordPiece" in types:
        kind, norm = "wordpiece", _wordpiece_normaliser(prefix if isinstance(prefix, str) else "##")
    elif "ByteLevel" in types:
        kind, norm = "bytelevel", _bytelevel_normaliser
    elif mtype == "Unigram" or marker is not None or model.get("byte_fallback") or "ByteFallback" in types:
        kind, norm = "spm", _spm_normaliser(marker or _SPACE_MARK)
    elif mtype == "BPE" and isinstance(prefix, str) and prefix:
        # A BPE trained with a continuation prefix on whitespace-split words reads like WordPiece.
        kind, norm = "wordpiece", _wordpiece_normaliser(prefix)
    else:
        kind, norm = "plain", _plain_normaliser

    table: _Table = {token_id: norm(piece) for token_id, piece in pieces.items()}
    unk = model.get("unk_id") if mtype == "Unigram" else None
    if isinstance(unk, int) and unk in pieces:
        table[unk] = (pieces[unk], _TEXT)
    unk_token = model.get("unk_token")
    if isinstance(unk_token, str) and isinstance(vocab, dict) and isinstance(vocab.get(unk_token), int):
        table[vocab[unk_token]] = (unk_token, _TEXT)
    added = raw.get("added_tokens") or []
    if not isinstance(added, list):
        raise VocabularyError(f"{path}: tokenizer.json 'added_tokens' is not a list")
    for tok in added:
        if not isinstance(tok, dict) or not isinstance(tok.get("content"), str):
            raise VocabularyError(f"{path}: tokenizer.json added token {tok!r} has no 'content' string")
        token_id = _token_id(tok.get("id"), path, f"added token {tok['content']!r}")
        # Added tokens are matched on raw text, so their content is already text (never surface form).
        content = tok["content"]
        table[token_id] = (content, _TEXT) if tok.get("special") else (content.encode("utf-8"), _TEXT)
    label = {"spm": "SentencePiece-style", "bytelevel": "byte-level", "wordpiece": "WordPiece", "plain": "plain"}[kind]
    return _finish(table, kind, f"{path.name} ({mtype if mtype == label else f'{mtype}, {label}'})", path)


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


def _from_sentencepiece(path: Path, data: bytes, embedding_rows: int | None = None) -> Vocab:
    import sentencepiece as spm

    try:
        proc = spm.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        first = first_line(exc)
        raise VocabularyError(f"{path}: not a readable SentencePiece model ({first}); the file may be truncated or corrupt") from None
    sidecars = _read_sidecars(path.parent)
    chatglm = path.name == "ice_text.model"
    n = proc.get_piece_size()
    offset = 0
    specials = set(sidecars.special_names)
    if chatglm:
        specials |= _CHATGLM_SPECIALS
        value = sidecars.config.get("num_image_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKEN_ID - n:
            offset = value
        elif embedding_rows is not None and n <= embedding_rows < n + _CHATGLM_IMAGE_TOKENS:
            offset = 0  # the embedding has no room for the image ids, so this checkpoint dropped them
        else:
            offset = _CHATGLM_IMAGE_TOKENS
    norm = _spm_normaliser()
    table: _Table = {}
    for i, piece in enumerate(proc.id_to_piece(list(range(n)))):
        if proc.is_unused(i):
            continue
        if chatglm and (text := _chatglm_text(piece)) is not None:
            table[i + offset] = (text, _TEXT)
        elif proc.is_control(i) or proc.is_unknown(i) or piece in specials:
            table[i + offset] = (piece, _TEXT)
        else:
            table[i + offset] = norm(piece)
    _apply_added(table, sidecars)
    what = f"ChatGLM SentencePiece, ids + {offset}" if chatglm else "SentencePiece"
    return _finish(table, "spm", f"{path.name} ({what})", path)


def _chatglm_text(piece: str) -> bytes | None:
    if piece == "<n>":
        return b"\n"
    if piece == "<|tab|>":
        return b"\t"
    m = _CHATGLM_BLANK.fullmatch(piece)
    return b" " * int(m.group(1)) if m else None


def _from_tiktoken(path: Path, data: bytes) -> Vocab:
    table: _Table = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise VocabularyError(f"{path}:{lineno}: expected '<base64 token> <rank>', found {len(parts)} fields")
        try:
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (ValueError, binascii.Error):
            raise VocabularyError(f"{path}:{lineno}: bad base64 token or rank; the file may be corrupt") from None
        if not 0 <= rank <= _MAX_TOKEN_ID:
            raise VocabularyError(
                f"{path}:{lineno}: rank {parts[1][:40].decode('ascii', 'replace')} is out of range (0 to {_MAX_TOKEN_ID})"
            )
        table[rank] = (token, _TEXT)
    if path.name == "qwen.tiktoken":
        for i, name in enumerate(_QWEN_SPECIALS, start=_QWEN_SPECIAL_START):
            table.setdefault(i, (name, _TEXT))
    _apply_added(table, _read_sidecars(path.parent))
    return _finish(table, "tiktoken", f"{path.name} (tiktoken)", path)


def _from_vocab_json(path: Path) -> Vocab:
    data = _read_json(path, "vocab.json")
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: vocab.json must map tokens to ids; found a {type(data).__name__}")
    sidecars = _read_sidecars(path.parent)
    # GPT-2/RoBERTa/Qwen2 write byte-level pieces; Marian writes SentencePiece ones.
    spm_like = sum(1 for p in data if p.startswith(_SPACE_MARK)) > sum(1 for p in data if p.startswith("\u0120"))
    norm: Normaliser = _spm_normaliser() if spm_like else _bytelevel_normaliser
    table: _Table = {}
    for piece, token_id in data.items():
        token_id = _token_id(token_id, path, f"token {piece!r}")
        table[token_id] = (piece, _TEXT) if piece in sidecars.special_names else norm(piece)
    _apply_added(table, sidecars)
    kind = "spm" if spm_like else "bytelevel"
    return _finish(table, kind, f"{path.name} ({'SentencePiece-style' if spm_like else 'byte-level BPE'})", path)


def _from_vocab_txt(path: Path) -> Vocab:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VocabularyError(f"{path}: unreadable vocab.txt (not UTF-8 text)") from None
    sidecars = _read_sidecars(path.parent)
    specials = _BERT_SPECIALS | sidecars.special_names
    norm = _wordpiece_normaliser()
    table: _Table = {}
    # transformers' load_vocab: one token per line, id = line number.
    for i, piece in enumerate(text.split("\n")):
        piece = piece.rstrip("\r")
        if not piece:
            continue
        table[i] = (piece, _TEXT) if piece in specials else norm(piece)
    _apply_added(table, sidecars)
    return _finish(table, "wordpiece", f"{path.name} (WordPiece)", path)


def _guess_normaliser(tokens: list[str]) -> tuple[str, Normaliser]:
    spm = sum(1 for t in tokens if t.startswith(_SPACE_MARK))
    byte_level = sum(1 for t in tokens if t.startswith("\u0120"))
    if spm > byte_level:
        return "spm", _spm_normaliser()
    if byte_level:
        return "bytelevel", _bytelevel_normaliser
    return "plain", _plain_normaliser


def vocab_from_gguf(tokens: list[str], token_types: list[int] | None, model: str, source: str) -> Vocab:
    """Vocabulary from GGUF ``tokenizer.ggml.tokens`` / ``token_type`` / ``model``.

    ``llama`` and ``t5`` hold SentencePiece pieces, ``gpt2`` byte-level ones,
    ``bert`` WordPiece rewritten by llama.cpp's converter into SentencePiece
    form (``x`` -> ``▁x``, ``##x`` -> ``x``). Control and unknown tokens are
    special; user-defined ones are raw text (the converter pre-normalises
    them, ``▁`` included); unused ones are placeholders and get no key.
    """
    norm: Normaliser
    if model in ("llama", "t5", "bert"):
        kind, norm = ("wordpiece" if model == "bert" else "spm"), _spm_normaliser()
    elif model == "gpt2":
        kind, norm = "bytelevel", _bytelevel_normaliser
    elif not model:
        kind, norm = _guess_normaliser([t for t in tokens if isinstance(t, str)])
    else:
        kind, norm = "plain", _plain_normaliser
    types = list(token_types or [])
    table: _Table = {}
    for i, piece in enumerate(tokens):
        if not isinstance(piece, str):
            raise VocabularyError(f"{source}: tokenizer.ggml.tokens[{i}] is {type(piece).__name__}; expected a string")
        t = types[i] if i < len(types) else _GGUF_NORMAL
        if t == _GGUF_UNUSED:
            continue
        if t in (_GGUF_CONTROL, _GGUF_UNKNOWN):
            table[i] = (piece, _TEXT)
        elif t == _GGUF_USER_DEFINED:
            table[i] = (piece.replace(_SPACE_MARK, " ").encode("utf-8") if kind != "bytelevel" else piece.encode("utf-8"), _TEXT)
        else:
            table[i] = norm(piece)
    return _finish(table, kind, f"{source} (GGUF tokenizer.ggml, model {model or 'unset'!r})", source)


def find_tokenizer_file(folder: Path) -> Path | None:
    """The first tokenizer file of :data:`TOKENIZER_FILES` present in ``folder``."""
    for name in TOKENIZER_FILES:
        if "*" in name:
            hits = sorted(p for p in folder.glob(name) if is_regular_file(p, "tokenizer file"))
            if hits:
                return hits[0]
        elif is_regular_file(folder / name, "tokenizer file"):
            return folder / name
    return None


def load_vocab(path: Path, embedding_rows: int | None = None) -> Vocab:
    """Load a tokenizer file of any supported kind, chosen by its name (and, for ``*.model``, its content).

    ``embedding_rows`` (the checkpoint's ``vocab_size``, when known) only
    settles ChatGLM-6B's image-id offset when ``tokenizer_config.json`` does
    not. Raises :class:`VocabularyError` naming the file when it is
    unreadable, empty, truncated or not what its name says.
    """
    path = Path(path)
    name = path.name
    try:
        if name == "vocab.json":
            return _from_vocab_json(path)
        if name.endswith(".json"):
            return _from_tokenizer_json(path)
        if name.endswith(".model"):
            data = _read_bytes(path)
            # GLM-4's tokenizer.model and Kimi's tiktoken.model are tiktoken text, not protobuf.
            if _TIKTOKEN_LINE.match(data, 0, 512):
                return _from_tiktoken(path, data)
            return _from_sentencepiece(path, data, embedding_rows)
        if name.endswith(".tiktoken"):
            return _from_tiktoken(path, _read_bytes(path))
        if name.endswith(".txt"):
            return _from_vocab_txt(path)
    except (FormatError, InputNotFound) as exc:
        raise VocabularyError(str(exc)) from None
    raise VocabularyError(f"{path}: not a tokenizer file awmtrace reads (expected one of {', '.join(TOKENIZER_FILES)})")


def shared_tokens(a: Vocab, b: Vocab, rows_a: int, rows_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(ids_a, ids_b)``, each ``(n_shared,)`` int64, of the keys both vocabularies hold.

    Only ids inside both embeddings (``id < rows_a``, ``id < rows_b``) count;
    each id appears at most once on each side. Sorted by ``ids_a`` so that
    reading embedding rows walks forward.
    """
    common = a.keys.keys() & b.keys.keys()
    ids_a = np.fromiter((a.keys[k] for k in common), dtype=np.int64, count=len(common))
    ids_b = np.fromiter((b.keys[k] for k in common), dtype=np.int64, count=len(common))
    inside = (ids_a < rows_a) & (ids_b < rows_b)
    ids_a, ids_b = ids_a[inside], ids_b[inside]
    order = np.argsort(ids_a, kind="stable")
    return ids_a[order], ids_b[order]


def vocab_for(source: TensorSource) -> Vocab | None:
    """The vocabulary that goes with a checkpoint, or ``None`` when there is no tokenizer.

    GGUF files carry theirs in metadata; a directory (or the folder of a
    single weights file) is searched for :data:`TOKENIZER_FILES`.
    """
    if source.format == "gguf":
        try:
            tokens = source.field("tokenizer.ggml.tokens")  # type: ignore[attr-defined]
            if not tokens:
                return None
            types = source.field("tokenizer.ggml.token_type")  # type: ignore[attr-defined]
            model = source.field("tokenizer.ggml.model")  # type: ignore[attr-defined]
        except FormatError as exc:
            raise VocabularyError(str(exc)) from None
        model = str(model or "")
        if model in ("no_vocab", "none"):
            return None
        if not isinstance(tokens, list):
            raise VocabularyError(f"{source.path}: tokenizer.ggml.tokens is not a list of strings")
        if types is not None and not isinstance(types, list):
            raise VocabularyError(f"{source.path}: tokenizer.ggml.token_type is not a list of integers")
        return vocab_from_gguf(tokens, types, model, source.path.name)
    folder = source.path if source.path.is_dir() else source.path.parent
    found = find_tokenizer_file(folder)
    if found is None:
        return None
    config = getattr(source, "config", None)
    rows = config.get("vocab_size") if isinstance(config, dict) else None
    return load_vocab(found, rows if isinstance(rows, int) and not isinstance(rows, bool) else None)
