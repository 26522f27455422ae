"""Vocabularies, normalised so the same text piece matches across tokenizer styles.

Every token becomes a *key*: the raw bytes of the text it stands for, or, for
special/control tokens, their literal string (a ``str`` key never equals a
``bytes`` key, so ``<s>`` only matches ``<s>``). The surface forms undone:

* SentencePiece (``tokenizer.model``, ``ice_text.model``, Unigram/Metaspace
  ``tokenizer.json``, GGUF ``llama``): ``▁`` is a space, ``<0xNN>`` is byte NN;
* byte-level BPE (GPT-2 style ``tokenizer.json``/``vocab.json``, GGUF ``gpt2``):
  each character maps back to its byte through GPT-2's byte-to-unicode table
  (``Ġ`` is a space, ``Ċ`` a newline);
* WordPiece (``vocab.txt``, WordPiece ``tokenizer.json``, GGUF ``bert``): a
  word-initial piece ``x`` is `` x`` (it follows a space, as SentencePiece's
  ``▁x`` does), a continuation ``##x`` is ``x``;
* tiktoken files (``*.tiktoken``, Qwen's ``qwen.tiktoken``): the base64 bytes.

When two ids of one vocabulary share a key, the lowest id keeps it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import FormatError, VocabularyError
from awmtrace.io.base import TensorSource

__all__ = ["Vocab", "load_vocab", "vocab_for", "vocab_from_gguf", "find_tokenizer_file", "shared_tokens", "bytes_to_unicode", "TOKENIZER_FILES"]

Key = bytes | str

# Searched in this order in a model directory (``*.tiktoken`` is a glob).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "ice_text.model", "*.tiktoken", "vocab.json", "vocab.txt")

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class Vocab:
    """Normalised vocabulary: ``keys`` maps each key to its (lowest) token id.

    ``kind`` is the surface style (``spm``, ``bytelevel``, ``wordpiece``,
    ``tiktoken``, ``plain``); ``source`` says which file (or GGUF field) it
    came from; ``size`` is the largest id + 1.
    """

    keys: dict[Key, int]
    kind: str
    source: str
    size: int

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
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _spm_key(piece: str) -> bytes:
    m = _BYTE_TOKEN.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _bytelevel_key(piece: str) -> bytes:
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        # Not a byte-level piece (an added token written as plain text).
        return piece.encode("utf-8")


def _wordpiece_key(piece: str, prefix: str = "##") -> bytes:
    if piece.startswith(prefix) and len(piece) > len(prefix):
        return piece[len(prefix) :].encode("utf-8")
    return (" " + piece).encode("utf-8")


def _looks_special(piece: str) -> bool:
    return bool(re.fullmatch(r"\[[A-Za-z_]+\]|<\|?[A-Za-z0-9_./:-]*\|?>", piece))


def _build(entries: Iterable[tuple[int, Key]], kind: str, source: str) -> Vocab:
    keys: dict[Key, int] = {}
    size = 0
    for token_id, key in sorted(entries, key=lambda e: e[0]):
        size = max(size, token_id + 1)
        keys.setdefault(key, token_id)
    if not keys:
        raise VocabularyError(f"{source}: the vocabulary is empty")
    return Vocab(keys=keys, kind=kind, source=source, size=size)


def _walk_types(node: Any) -> set[str]:
    """Every ``type`` value in a nested tokenizer.json component (Sequence pre-tokenizers etc.)."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for value in node.values():
            found |= _walk_types(value)
    elif isinstance(node, list):
        for value in node:
            found |= _walk_types(value)
    return found


def _from_tokenizer_json(path: Path) -> Vocab:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"{path}: unreadable tokenizer.json ({exc})") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise VocabularyError(f"{path}: tokenizer.json has no 'model' object")
    mtype = model.get("type")
    vocab = model.get("vocab")
    if mtype is None:  # old files omit it; infer from the vocab shape
        mtype = "Unigram" if isinstance(vocab, list) else "BPE"
    pieces: list[tuple[int, str]]
    if isinstance(vocab, dict):
        pieces = [(int(i), str(p)) for p, i in vocab.items()]
    elif isinstance(vocab, list):
        pieces = [(i, str(item[0] if isinstance(item, list) else item)) for i, item in enumerate(vocab)]
    else:
        raise VocabularyError(f"{path}: tokenizer.json model has no vocab")
    components = _walk_types([raw.get("pre_tokenizer"), raw.get("decoder"), raw.get("normalizer")])
    prefix = str(model.get("continuing_subword_prefix") or "##")
    if mtype == "WordPiece":
        kind, norm = "wordpiece", (lambda p: _wordpiece_key(p, prefix))
    elif mtype == "Unigram" or "Metaspace" in components or model.get("byte_fallback"):
        kind, norm = "spm", _spm_key
    elif "ByteLevel" in components:
        kind, norm = "bytelevel", _bytelevel_key
    else:
        kind, norm = "plain", (lambda p: p.encode("utf-8"))
    special: dict[int, str] = {}
    plain_added: dict[int, str] = {}
    for tok in raw.get("added_tokens") or []:
        if not isinstance(tok, dict) or "id" not in tok or "content" not in tok:
            continue
        (special if tok.get("special") else plain_added)[int(tok["id"])] = str(tok["content"])
    entries: list[tuple[int, Key]] = []
    for token_id, piece in pieces:
        if token_id in special:
            continue
        if kind in ("spm", "wordpiece") and _looks_special(piece) and not _BYTE_TOKEN.match(piece):
            entries.append((token_id, piece))
        else:
            entries.append((token_id, norm(piece)))
    entries += [(i, c) for i, c in special.items()]
    entries += [(i, c.encode("utf-8")) for i, c in plain_added.items() if i not in dict(pieces)]
    label = {"spm": "SentencePiece-style", "bytelevel": "byte-level", "wordpiece": "WordPiece", "plain": "plain"}[kind]
    return _build(entries, kind, f"{path.name} ({mtype}, {label})")


def _from_sentencepiece(path: Path) -> Vocab:
    import sentencepiece as spm

    try:
        proc = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError, TypeError) as exc:
        raise VocabularyError(f"{path}: unreadable SentencePiece model ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    entries: list[tuple[int, Key]] = []
    for i in range(proc.get_piece_size()):
        piece = proc.id_to_piece(i)
        if proc.is_control(i) or proc.is_unknown(i):
            entries.append((i, piece))
        else:
            entries.append((i, _spm_key(piece)))
    return _build(entries, "spm", f"{path.name} (SentencePiece)")


def _from_tiktoken(path: Path) -> Vocab:
    entries: list[tuple[int, Key]] = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise VocabularyError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise VocabularyError(f"{path}:{lineno}: expected '<base64 token> <rank>'")
        try:
            entries.append((int(parts[1]), base64.b64decode(parts[0], validate=True)))
        except (ValueError, binascii.Error):
            raise VocabularyError(f"{path}:{lineno}: bad base64 token or rank") from None
    return _build(entries, "tiktoken", f"{path.name} (tiktoken)")


def _from_vocab_json(path: Path) -> Vocab:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"{path}: unreadable vocab.json ({exc})") from None
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: vocab.json must map tokens to ids")
    entries: list[tuple[int, Key]] = [(int(i), _bytelevel_key(str(p))) for p, i in data.items()]
    added = path.parent / "added_tokens.json"
    if added.is_file():
        try:
            extra = json.loads(added.read_text(encoding="utf-8"))
            entries += [(int(i), str(p)) for p, i in extra.items()]
        except (OSError, ValueError, AttributeError):
            pass
    return _build(entries, "bytelevel", f"{path.name} (byte-level BPE)")


def _from_vocab_txt(path: Path) -> Vocab:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"{path}: unreadable vocab.txt ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    entries: list[tuple[int, Key]] = []
    for i, piece in enumerate(lines):
        piece = piece.rstrip("\r")
        entries.append((i, piece if _looks_special(piece) else _wordpiece_key(piece)))
    return _build(entries, "wordpiece", f"{path.name} (WordPiece)")


# GGUF token types (llama.cpp llama_token_type): 1 normal, 2 unknown, 3 control,
# 4 user-defined, 5 unused, 6 byte.
_GGUF_SPECIAL_TYPES = {2, 3}


def vocab_from_gguf(tokens: list[str], token_types: list[int] | None, model: str, source: str) -> Vocab:
    """Vocabulary from GGUF ``tokenizer.ggml.*`` fields."""
    norm = {"llama": _spm_key, "t5": _spm_key, "gpt2": _bytelevel_key, "bert": _wordpiece_key}.get(model)
    kind = {"llama": "spm", "t5": "spm", "gpt2": "bytelevel", "bert": "wordpiece"}.get(model, "plain")
    if norm is None:
        norm = lambda p: p.encode("utf-8")  # noqa: E731
    types = token_types or []
    entries: list[tuple[int, Key]] = []
    for i, piece in enumerate(tokens):
        t = types[i] if i < len(types) else 1
        entries.append((i, piece if t in _GGUF_SPECIAL_TYPES else norm(piece)))
    return _build(entries, kind, f"{source} (GGUF tokenizer.ggml, model {model!r})")


def find_tokenizer_file(folder: Path) -> Path | None:
    """The first tokenizer file of :data:`TOKENIZER_FILES` present in ``folder``."""
    for name in TOKENIZER_FILES:
        if "*" in name:
            hits = sorted(folder.glob(name))
            if hits:
                return hits[0]
        elif (folder / name).is_file():
            return folder / name
    return None


def load_vocab(path: Path) -> Vocab:
    """Load a tokenizer file of any supported kind, chosen by its name."""
    name = path.name
    try:
        if name.endswith(".json") and name != "vocab.json":
            return _from_tokenizer_json(path)
        if name.endswith(".model"):
            return _from_sentencepiece(path)
        if name.endswith(".tiktoken"):
            return _from_tiktoken(path)
        if name == "vocab.json":
            return _from_vocab_json(path)
        if name.endswith(".txt"):
            return _from_vocab_txt(path)
    except FormatError as exc:
        raise VocabularyError(str(exc)) from None
    raise VocabularyError(f"{path}: not a tokenizer file awmtrace reads ({', '.join(TOKENIZER_FILES)})")


def shared_tokens(a: Vocab, b: Vocab, rows_a: int, rows_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(ids_a, ids_b)`` of the keys both vocabularies hold, within both embeddings' rows.

    Sorted by ``ids_a`` so that reading embedding rows walks forward.
    """
    pairs = [(ia, b.keys[k]) for k, ia in a.keys.items() if k in b.keys]
    pairs = [(ia, ib) for ia, ib in pairs if ia < rows_a and ib < rows_b]
    pairs.sort()
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arr = np.asarray(pairs, dtype=np.int64)
    return arr[:, 0].copy(), arr[:, 1].copy()


def vocab_for(source: TensorSource) -> Vocab | None:
    """The vocabulary that goes with a checkpoint, or ``None`` when there is no tokenizer.

    GGUF files carry theirs in metadata; a directory (or the folder of a
    single weights file) is searched for :data:`TOKENIZER_FILES`.
    """
    if source.format == "gguf":
        tokens = source.field("tokenizer.ggml.tokens")  # type: ignore[attr-defined]
        if not tokens:
            return None
        types = source.field("tokenizer.ggml.token_type")  # type: ignore[attr-defined]
        model = str(source.field("tokenizer.ggml.model") or "")  # type: ignore[attr-defined]
        return vocab_from_gguf(list(tokens), list(types) if types is not None else None, model, source.path.name)
    folder = source.path if source.path.is_dir() else source.path.parent
    found = find_tokenizer_file(folder)
    return load_vocab(found) if found is not None else None
