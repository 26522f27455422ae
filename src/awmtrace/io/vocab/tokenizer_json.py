"""Hugging Face ``tokenizer.json`` (BPE, Unigram, WordPiece, WordLevel models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from awmtrace.errors import VocabularyError
from awmtrace.io.vocab.keys import (
    _SPACE_MARK,
    _TEXT,
    Normaliser,
    Vocab,
    _bytelevel_normaliser,
    _finish,
    _plain_normaliser,
    _read_json,
    _spm_normaliser,
    _Table,
    _token_id,
    _wordpiece_normaliser,
)


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
