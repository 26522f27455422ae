"""SentencePiece protobufs, tiktoken files, ``vocab.json``/``vocab.txt`` and GGUF vocabularies."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from awmtrace.errors import VocabularyError, first_line
from awmtrace.io.vocab.keys import (
    _BERT_SPECIALS,
    _CHATGLM_BLANK,
    _CHATGLM_IMAGE_TOKENS,
    _CHATGLM_SPECIALS,
    _GGUF_CONTROL,
    _GGUF_NORMAL,
    _GGUF_UNKNOWN,
    _GGUF_UNUSED,
    _GGUF_USER_DEFINED,
    _MAX_TOKEN_ID,
    _QWEN_SPECIAL_START,
    _QWEN_SPECIALS,
    _SPACE_MARK,
    _TEXT,
    Normaliser,
    Vocab,
    _bytelevel_normaliser,
    _finish,
    _plain_normaliser,
    _read_bytes,
    _read_json,
    _spm_normaliser,
    _Table,
    _token_id,
    _wordpiece_normaliser,
)
from awmtrace.io.vocab.sidecars import (
    _apply_added,
    _read_sidecars,
)


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
