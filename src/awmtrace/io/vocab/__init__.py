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

from pathlib import Path

import numpy as np

from awmtrace.errors import FormatError, InputNotFound, VocabularyError
from awmtrace.io.base import TensorSource, is_regular_file
from awmtrace.io.vocab.formats import _from_sentencepiece, _from_tiktoken, _from_vocab_json, _from_vocab_txt, vocab_from_gguf
from awmtrace.io.vocab.keys import _TIKTOKEN_LINE, TOKENIZER_FILES, TOKENIZER_SIDECARS, Vocab, _read_bytes, bytes_to_unicode
from awmtrace.io.vocab.tokenizer_json import _from_tokenizer_json

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
