"""Vocabularies of every supported kind, written by the real libraries, and cross-style token matching."""

from __future__ import annotations

import base64
import io
import json
import random
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import tiktoken
import tiktoken.load
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
)

from awmtrace.errors import VocabularyError
from awmtrace.io.gguf_file import GGUFSource
from awmtrace.io.vocab import (
    TOKENIZER_FILES,
    Vocab,
    bytes_to_unicode,
    find_tokenizer_file,
    load_vocab,
    shared_tokens,
    vocab_for,
)

SP = "\u2581"
BYTE_LEVEL = bytes_to_unicode()

# Text pieces every style below spells in its own way. b"\xe4" is a lone
# byte (invalid UTF-8); b"\n" is a byte-fallback piece in SentencePiece form.
PIECES: list[bytes] = [
    b" the",
    b"the",
    b" hello",
    b"ing",
    b"\n",
    b" ",
    b"  ",
    "é".encode(),
    " 中文".encode(),
    b"\xe4",
    b"\t",
    b"A",
    b"<s>",
]


def as_spm(text: bytes) -> str:
    """SentencePiece spelling: ``▁`` for space, ``<0xNN>`` for what is not a whole character (or a newline, as Llama)."""
    if len(text) == 1 and (text[0] >= 0x80 or text in (b"\n", b"\t")):
        return f"<0x{text[0]:02X}>"
    return text.decode("utf-8").replace(" ", SP)


def as_bytelevel(text: bytes) -> str:
    return "".join(BYTE_LEVEL[b] for b in text)


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def write_gguf(path: Path, tokens: list, types: list[int], model: str) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_vocab(path: Path) -> Vocab | None:
    src = GGUFSource(path)
    try:
        return vocab_for(src)
    finally:
        src.close()


def train_spm(model_type: str, **extra) -> bytes:
    """A tiny SentencePiece model trained on generated text (byte fallback on)."""
    rng = random.Random(7)
    words = ["hello", "world", "the", "thing", "ing", "中文", "字符", "été", "naïve", "code", "data", "token", "alpha", "gamma"]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=340,
        model_type=model_type,
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
        **extra,
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def spm_models() -> dict[str, bytes]:
    specials = dict(control_symbols=["<ctl>"], user_defined_symbols=["<ud>"])
    return {kind: train_spm(kind, **specials) for kind in ("bpe", "unigram")}


def test_bytelevel_tokenizer_json_keys_are_what_the_library_decodes(tmp_path: Path) -> None:
    tokens = [as_bytelevel(bytes([b])) for b in range(256)] + [as_bytelevel(p) for p in PIECES if len(p) > 1]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.add_tokens([AddedToken("<think>", special=False)])
    tok.save(str(tmp_path / "tokenizer.json"))

    v = load_vocab(tmp_path / "tokenizer.json")
    assert v.kind == "bytelevel" and v.n_special == 1
    assert v.keys["<|endoftext|>"] == tok.token_to_id("<|endoftext|>")
    assert v.keys[b"<think>"] == tok.token_to_id("<think>")
    checked = 0
    for key, token_id in v.keys.items():
        if isinstance(key, bytes):
            text = tok.decode([token_id], skip_special_tokens=False)
            if "\ufffd" not in text:
                assert key == text.encode("utf-8"), (token_id, key, text)
                checked += 1
    assert checked > 128
    assert v.keys[b"\xe4"] == tok.token_to_id(as_bytelevel(b"\xe4"))
    assert v.keys[b" "] == tok.token_to_id("Ġ") and v.keys[b"\n"] == tok.token_to_id("Ċ")


@pytest.mark.parametrize("prepend_scheme", ["always", "first", "never"])
def test_metaspace_unigram_keys_match_the_decoder_for_every_prepend_scheme(tmp_path: Path, prepend_scheme: str) -> None:
    pieces = ["<unk>", "a", f"{SP}hi", SP, "<0x41>", "<0xE4>", "é", f"{SP}{SP}", "<s>"]
    tok = Tokenizer(models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme=prepend_scheme)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement=SP, prepend_scheme=prepend_scheme)])
    tok.add_special_tokens(["<s>"])
    tok.save(str(tmp_path / "tokenizer.json"))

    v = load_vocab(tmp_path / "tokenizer.json")
    assert v.kind == "spm"
    assert v.keys["<unk>"] == 0 and v.keys["<s>"] == 8
    for token_id in (1, 2, 3, 4, 6, 7):
        text = tok.decode([1, token_id])  # after "a", so no leading-space stripping applies
        assert v.keys[text[1:].encode("utf-8")] == token_id
    assert v.keys[b"\xe4"] == 5


def test_metaspace_replacement_and_legacy_layouts_give_the_same_keys(tmp_path: Path) -> None:
    base = Tokenizer(models.Unigram([("<unk>", 0.0), ("_hello", -1.0), ("_", -2.0), ("lo", -3.0)], unk_id=0))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="_", prepend_scheme="always")
    base.save(str(tmp_path / "tokenizer.json"))
    assert {k: i for k, i in load_vocab(tmp_path / "tokenizer.json").keys.items()} == {"<unk>": 0, b" hello": 1, b" ": 2, b"lo": 3}

    # Files written before prepend_scheme existed carry add_prefix_space instead.
    raw = json.loads((tmp_path / "tokenizer.json").read_text())
    raw["pre_tokenizer"] = {"type": "Metaspace", "replacement": "_", "add_prefix_space": True}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(raw))
    assert load_vocab(tmp_path / "old" / "tokenizer.json").keys[b" hello"] == 1


def test_llama_style_bpe_with_replace_normaliser_is_sentencepiece_style(tmp_path: Path) -> None:
    vocab = {"<unk>": 0, "<0x0A>": 1, "<0x41>": 2, SP: 3, "A": 4, f"{SP}A": 5, "AA": 6}
    tok = Tokenizer(models.BPE(vocab, merges=[("A", "A"), (SP, "A")], byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    tok.decoder = decoders.Sequence([decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.save(str(tmp_path / "tokenizer.json"))
    v = load_vocab(tmp_path / "tokenizer.json")
    assert v.kind == "spm"
    # The text piece "A" (id 4) holds b"A", not the byte-fallback <0x41> (id 2) despite its lower id.
    assert v.keys == {"<unk>": 0, b"\n": 1, b" ": 3, b"A": 4, b" A": 5, b"AA": 6}
    assert tok.decode([4, 5]) == "A A"


def test_wordpiece_tokenizer_json_matches_its_decoder(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "##ing", "world", "##s", "the", "[unused0]"]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(["[PAD]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tokenizer.json"))
    v = load_vocab(tmp_path / "tokenizer.json")
    assert v.kind == "wordpiece" and v.n_special == 5  # the four added plus the model's unk_token
    for token_id in (6, 7, 8, 9, 10):
        text = tok.decode([5, token_id])  # after "hello": a continuation glues on, a word-initial piece gets a space
        assert v.keys[text[len("hello") :].encode("utf-8")] == token_id
    assert v.keys[b" hello"] == 5 and v.keys[b"ing"] == 6 and v.keys["[CLS]"] == 2 and v.keys["[UNK]"] == 1


def test_old_tokenizer_json_without_model_type_reads_the_same(tmp_path: Path) -> None:
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "hi": 1, "##s": 2}, unk_token="[UNK]", max_input_chars_per_word=100))
    wp.decoder = decoders.WordPiece()
    bpe = Tokenizer(models.BPE({"Ġ": 0, "a": 1, "Ġa": 2}, merges=[("Ġ", "a")]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    uni = Tokenizer(models.Unigram([("<unk>", 0.0), (f"{SP}x", -1.0)], unk_id=0))
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    for name, tok in {"wp": wp, "bpe": bpe, "uni": uni}.items():
        (tmp_path / name).mkdir()
        tok.save(str(tmp_path / name / "tokenizer.json"))
        raw = json.loads((tmp_path / name / "tokenizer.json").read_text())
        del raw["model"]["type"]
        (tmp_path / f"{name}-old").mkdir()
        (tmp_path / f"{name}-old" / "tokenizer.json").write_text(json.dumps(raw))
        new, old = load_vocab(tmp_path / name / "tokenizer.json"), load_vocab(tmp_path / f"{name}-old" / "tokenizer.json")
        assert old.keys == new.keys and old.kind == new.kind, name
    assert load_vocab(tmp_path / "wp-old" / "tokenizer.json").keys == {"[UNK]": 0, b" hi": 1, b"s": 2}


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_keys_match_what_sentencepiece_decodes(tmp_path: Path, spm_models: dict[str, bytes], model_type: str) -> None:
    data = spm_models[model_type]
    proc = spm.SentencePieceProcessor(model_proto=data)
    (tmp_path / "tokenizer.model").write_bytes(data)
    v = load_vocab(tmp_path / "tokenizer.model")
    assert v.kind == "spm" and v.size == proc.get_piece_size()
    anchor = proc.piece_to_id("a")
    assert proc.id_to_piece(anchor) == "a"
    by_id = {i: k for k, i in v.keys.items()}
    n_text = 0
    for i in range(proc.get_piece_size()):
        piece = proc.id_to_piece(i)
        if proc.is_control(i) or proc.is_unknown(i):
            assert by_id[i] == piece
        elif proc.is_byte(i):
            byte = bytes([int(piece[3:5], 16)])
            # A byte piece keeps its key only when no text piece spells that byte.
            text_id = proc.piece_to_id(byte.decode("latin-1").replace(" ", SP)) if byte < b"\x80" else proc.unk_id()
            assert v.keys[byte] == (text_id if text_id != proc.unk_id() else i)
        else:
            assert by_id[i] == proc.decode([anchor, i])[1:].encode("utf-8"), piece
            n_text += 1
    assert n_text > 20
    assert v.keys["<ctl>"] == proc.piece_to_id("<ctl>")
    assert v.keys[b"<ud>"] == proc.piece_to_id("<ud>")  # user-defined pieces are text


def test_tiktoken_file_loads_in_tiktoken_and_gives_its_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache files outside tmp_path
    ranks = [bytes([b]) for b in range(256)] + [p for p in PIECES if len(p) > 1]
    path = tmp_path / "qwen.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ranks)))
    mergeable = tiktoken.load.load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding("t", pat_str=r"\S+|\s+", mergeable_ranks=mergeable, special_tokens={})
    v = load_vocab(path)
    assert v.kind == "tiktoken"
    for rank in range(len(ranks)):
        assert v.keys[enc.decode_single_token_bytes(rank)] == rank
    # Qwen-1's specials are defined in its tokenizer code, right after the 151643 ranks.
    assert v.keys["<|endoftext|>"] == 151643 and v.keys["<|im_end|>"] == 151645 and v.keys["<|extra_204|>"] == 151850
    assert v.n_special == 208

    other = tmp_path / "other" / "cl.tiktoken"
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    assert load_vocab(other).n_special == 0


def test_tiktoken_text_in_a_model_file_is_sniffed(tmp_path: Path) -> None:
    """GLM-4 ships tiktoken text as tokenizer.model, Kimi as tiktoken.model; special ids come from tokenizer_config.json."""
    text = b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256))
    for name in ("tokenizer.model", "tiktoken.model"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_bytes(text)
        config = {
            "added_tokens_decoder": {"256": {"content": "<|endoftext|>", "special": True}, "257": {"content": "<sop>", "special": False}}
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        assert find_tokenizer_file(folder) == folder / name
        v = load_vocab(folder / name)
        assert v.kind == "tiktoken" and v.keys[b"\xe4"] == 0xE4
        assert v.keys["<|endoftext|>"] == 256 and v.keys[b"<sop>"] == 257


def test_vocab_json_with_sidecars(tmp_path: Path) -> None:
    tokens = {as_bytelevel(p): i for i, p in enumerate([b"<|endoftext|>", b" hello", b"\xe4", b"<pad>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(tokens))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}, "pad_token": "<pad>"}))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<extra>": 4}))
    v = load_vocab(tmp_path / "vocab.json")
    assert v.keys == {"<|endoftext|>": 0, b" hello": 1, b"\xe4": 2, "<pad>": 3, b"<extra>": 4}

    # A malformed sidecar only loses its refinements.
    (tmp_path / "special_tokens_map.json").write_text("{")
    assert load_vocab(tmp_path / "vocab.json").keys[b"<|endoftext|>"] == 0


def test_marian_style_vocab_json_is_sentencepiece(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text(json.dumps({"</s>": 0, f"{SP}hello": 1, f"{SP}été": 2, "s": 3}))
    v = load_vocab(tmp_path / "vocab.json")
    assert v.kind == "spm" and v.keys[" été".encode()] == 2


def test_vocab_txt_bert_conventions(tmp_path: Path) -> None:
    lines = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "##ing", "the", "hello", "##", "中", "##中"]
    (tmp_path / "vocab.txt").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    v = load_vocab(tmp_path / "vocab.txt")
    assert v.kind == "wordpiece" and v.n_special == 5 and v.size == len(lines)
    assert v.keys[b" hello"] == 6  # the duplicate at line 9 loses to the lowest id
    assert v.keys[b"ing"] == 7 and v.keys[b" ##"] == 10 and v.keys[" 中".encode()] == 11 and v.keys["中".encode()] == 12
    assert v.keys["[CLS]"] == 3 and v.keys[b" [unused0]"] == 1


def test_chatglm_ice_text_model(tmp_path: Path) -> None:
    data = train_spm("unigram", user_defined_symbols=["<n>", "<|tab|>", "<|blank_2|>", "<|blank_3|>", "[gMASK]", "<sop>"])
    proc = spm.SentencePieceProcessor(model_proto=data)
    (tmp_path / "ice_text.model").write_bytes(data)
    (tmp_path / "tokenizer.model").write_bytes(data)
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model"
    v = load_vocab(tmp_path / "ice_text.model")
    plain = load_vocab(tmp_path / "tokenizer.model")
    # ChatGLM-6B's tokenizer puts 20000 image ids before the SentencePiece ids.
    assert v.keys[b"\n"] == proc.piece_to_id("<n>") + 20000
    assert v.keys[b"\t"] == proc.piece_to_id("<|tab|>") + 20000
    assert v.keys[b"   "] == proc.piece_to_id("<|blank_3|>") + 20000
    assert v.keys["[gMASK]"] == proc.piece_to_id("[gMASK]") + 20000 and v.keys["<sop>"] == proc.piece_to_id("<sop>") + 20000
    assert v.keys[b" hello"] == plain.keys[b" hello"] + 20000
    assert b"<n>" in plain.keys and "[gMASK]" not in plain.keys

    # A checkpoint whose embedding has only the SentencePiece rows dropped the image ids (ChatGLM-6B after April 2023).
    n = proc.get_piece_size()
    assert load_vocab(tmp_path / "ice_text.model", embedding_rows=n).keys[b"\n"] == proc.piece_to_id("<n>")
    assert load_vocab(tmp_path / "ice_text.model", embedding_rows=n + 20000).keys[b"\n"] == proc.piece_to_id("<n>") + 20000
    # tokenizer_config.json's num_image_tokens settles it.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"num_image_tokens": 0}))
    assert load_vocab(tmp_path / "ice_text.model").keys[b"\n"] == proc.piece_to_id("<n>")


def test_gguf_token_types(tmp_path: Path) -> None:
    tokens = ["<unk>", "<s>", "<0x0A>", "<0x41>", f"{SP}hi", "A", "[PAD7]", f"<tool>{SP}x"]
    types = [2, 3, 6, 6, 1, 1, 5, 4]
    v = gguf_vocab(write_gguf(tmp_path / "m.gguf", tokens, types, "llama"))
    assert v is not None and v.kind == "spm"
    assert v.keys == {"<unk>": 0, "<s>": 1, b"\n": 2, b" hi": 4, b"A": 5, b"<tool> x": 7}
    assert v.size == 8

    gpt2 = gguf_vocab(write_gguf(tmp_path / "g.gguf", ["Ġhi", "Ċ", "<|endoftext|>", "<tool call>"], [1, 1, 3, 4], "gpt2"))
    assert gpt2 is not None and gpt2.keys == {b" hi": 0, b"\n": 1, "<|endoftext|>": 2, b"<tool call>": 3}


def test_gguf_without_vocabulary_or_with_a_bad_one(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "none.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf_vocab(tmp_path / "none.gguf") is None
    # A byte string that is not UTF-8 cannot be a token list entry.
    with pytest.raises(VocabularyError, match="bad.gguf"):
        gguf_vocab(write_gguf(tmp_path / "bad.gguf", [b"\xff\xfe", b"a"], [1, 1], "llama"))
    w = gguf.GGUFWriter(str(tmp_path / "ints.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_array("tokenizer.ggml.tokens", [1, 2, 3])
    w.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(VocabularyError, match="ints.gguf"):
        gguf_vocab(tmp_path / "ints.gguf")


def cross_style_vocabs(tmp_path: Path) -> dict[str, tuple[Vocab, dict[bytes | str, int]]]:
    """The PIECES (plus a special ``<s>``) in six styles, each in its own order: (vocab, id of each piece)."""
    out: dict[str, tuple[Vocab, dict[bytes | str, int]]] = {}

    # SentencePiece-style Unigram tokenizer.json, with <0x41> at a lower id than the text piece "A".
    order = ["<unk>", "<0x41>", *shuffled(PIECES, 1), "<s>"]
    pieces = [p if isinstance(p, str) else as_spm(p) for p in order]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.add_special_tokens(["<s>"])
    (tmp_path / "uni").mkdir()
    tok.save(str(tmp_path / "uni" / "tokenizer.json"))
    out["spm-json"] = (load_vocab(tmp_path / "uni" / "tokenizer.json"), {p: i for i, p in enumerate(order) if p not in ("<unk>", "<0x41>")})

    # Byte-level BPE tokenizer.json (tokenizers), <s> special.
    order = shuffled(PIECES, 2)
    tok = Tokenizer(models.BPE({as_bytelevel(p): i for i, p in enumerate(order)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>"])
    (tmp_path / "bl").mkdir()
    tok.save(str(tmp_path / "bl" / "tokenizer.json"))
    ids: dict[bytes | str, int] = {p: i for i, p in enumerate(order)}
    ids["<s>"] = tok.token_to_id("<s>")
    ids.pop(b"<s>")  # the added special token took over the text entry
    out["bytelevel-json"] = (load_vocab(tmp_path / "bl" / "tokenizer.json"), ids)

    # vocab.json (byte-level), no special.
    order = shuffled(PIECES, 3)
    (tmp_path / "vj").mkdir()
    (tmp_path / "vj" / "vocab.json").write_text(json.dumps({as_bytelevel(p): i for i, p in enumerate(order)}))
    out["vocab.json"] = (load_vocab(tmp_path / "vj" / "vocab.json"), {p: i for i, p in enumerate(order)})

    # tiktoken: raw bytes.
    order = shuffled(PIECES, 4)
    (tmp_path / "tt").mkdir()
    (tmp_path / "tt" / "x.tiktoken").write_bytes(b"".join(base64.b64encode(p) + b" %d\n" % i for i, p in enumerate(order)))
    out["tiktoken"] = (load_vocab(tmp_path / "tt" / "x.tiktoken"), {p: i for i, p in enumerate(order)})

    # GGUF llama (SentencePiece pieces, <s> control, byte pieces typed BYTE).
    order = [*shuffled(PIECES, 5), "<s>"]
    tokens = [p if isinstance(p, str) else as_spm(p) for p in order]
    types = [3 if isinstance(p, str) else 6 if t.startswith("<0x") else 1 for p, t in zip(order, tokens, strict=False)]
    out["gguf-llama"] = (gguf_vocab(write_gguf(tmp_path / "l.gguf", tokens, types, "llama")), {p: i for i, p in enumerate(order)})  # type: ignore[dict-item]

    # GGUF gpt2 (byte-level pieces).
    order = [*shuffled(PIECES, 6), "<s>"]
    tokens = [p if isinstance(p, str) else as_bytelevel(p) for p in order]
    types = [3 if isinstance(p, str) else 1 for p in order]
    out["gguf-gpt2"] = (gguf_vocab(write_gguf(tmp_path / "g.gguf", tokens, types, "gpt2")), {p: i for i, p in enumerate(order)})  # type: ignore[dict-item]
    return out


def test_the_same_text_pieces_match_across_all_styles(tmp_path: Path) -> None:
    styles = cross_style_vocabs(tmp_path)
    for name, (v, ids) in styles.items():
        assert {k: v.keys[k] for k in ids} == ids, name
    names = list(styles)
    for i, na in enumerate(names):
        for nb in names[i + 1 :]:
            (va, ida), (vb, idb) = styles[na], styles[nb]
            got_a, got_b = shared_tokens(va, vb, va.size, vb.size)
            expected = sorted((ida[k], idb[k]) for k in ida.keys() & idb.keys())
            assert list(zip(got_a.tolist(), got_b.tolist(), strict=False)) == expected, (na, nb)
            assert len(expected) >= len(PIECES) - 1


def test_special_tokens_only_match_special_tokens(tmp_path: Path) -> None:
    styles = cross_style_vocabs(tmp_path)
    vocab_json, ids_json = styles["vocab.json"]  # "<s>" is text there
    llama, ids_llama = styles["gguf-llama"]  # "<s>" is a control token there
    bl, ids_bl = styles["bytelevel-json"]  # "<s>" is a special added token there
    a, b = shared_tokens(vocab_json, llama, vocab_json.size, llama.size)
    pairs = set(zip(a.tolist(), b.tolist(), strict=False))
    # The text "<s>" matches the other vocabulary's text "<s>", never its control token.
    assert (ids_json[b"<s>"], ids_llama[b"<s>"]) in pairs
    assert ids_llama["<s>"] not in b.tolist()
    a, b = shared_tokens(bl, llama, bl.size, llama.size)
    assert (ids_bl["<s>"], ids_llama["<s>"]) in set(zip(a.tolist(), b.tolist(), strict=False))


def test_trained_sentencepiece_matches_a_byte_level_rendering_of_its_pieces(tmp_path: Path, spm_models: dict[str, bytes]) -> None:
    data = spm_models["bpe"]
    proc = spm.SentencePieceProcessor(model_proto=data)
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(data)
    sp = load_vocab(tmp_path / "sp" / "tokenizer.model")
    anchor = proc.piece_to_id("a")
    texts = {}
    for i in range(proc.get_piece_size()):
        if not (proc.is_control(i) or proc.is_unknown(i) or proc.is_byte(i)):
            texts[proc.decode([anchor, i])[1:].encode("utf-8")] = i
    order = shuffled(list(texts), 11)
    (tmp_path / "bl").mkdir()
    (tmp_path / "bl" / "vocab.json").write_text(json.dumps({as_bytelevel(t): j for j, t in enumerate(order)}))
    bl = load_vocab(tmp_path / "bl" / "vocab.json")
    a, b = shared_tokens(sp, bl, sp.size, bl.size)
    assert sorted(zip(a.tolist(), b.tolist(), strict=False)) == sorted((texts[t], j) for j, t in enumerate(order))


def test_wordpiece_and_sentencepiece_pieces_match(tmp_path: Path) -> None:
    wp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "##ing", "world", "##s", "the", "##the", "."]
    (tmp_path / "wp").mkdir()
    (tmp_path / "wp" / "vocab.txt").write_text("\n".join(wp) + "\n")
    uni = ["<unk>", "s", f"{SP}world", "ing", f"{SP}hello", "the", f"{SP}the", "[CLS]", "."]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in uni], unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    (tmp_path / "sp").mkdir()
    tok.save(str(tmp_path / "sp" / "tokenizer.json"))
    a_vocab, b_vocab = load_vocab(tmp_path / "wp" / "vocab.txt"), load_vocab(tmp_path / "sp" / "tokenizer.json")
    a, b = shared_tokens(a_vocab, b_vocab, 100, 100)
    pairs = {(wp[i], uni[j]) for i, j in zip(a.tolist(), b.tolist(), strict=False)}
    assert pairs == {
        ("hello", f"{SP}hello"),
        ("##ing", "ing"),
        ("world", f"{SP}world"),
        ("##s", "s"),
        ("the", f"{SP}the"),
        ("##the", "the"),
    }
    # A word-initial "." in BERT follows a space; SentencePiece's "." glues on, so they differ.
    assert a_vocab.keys[b" ."] == wp.index(".") and b_vocab.keys[b"."] == uni.index(".")
    # The special [CLS] is text in the SentencePiece vocabulary (no flag), so it does not match.
    assert not any(p == "[CLS]" for p, _ in pairs)

    # llama.cpp's GGUF "bert" spelling of the same vocab.txt matches it id for id.
    phantom = [p if p.startswith("[") else p[2:] if p.startswith("##") else SP + p for p in wp]
    types = [3 if p.startswith("[") else 1 for p in wp]
    g = gguf_vocab(write_gguf(tmp_path / "bert.gguf", phantom, types, "bert"))
    assert g is not None
    a, b = shared_tokens(a_vocab, g, 100, 100)
    assert a.tolist() == b.tolist() == list(range(len(wp)))


def test_shared_tokens_respects_embedding_rows(tmp_path: Path) -> None:
    order = shuffled(PIECES, 9)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "vocab.json").write_text(json.dumps({as_bytelevel(p): i for i, p in enumerate(PIECES)}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.tiktoken").write_bytes(b"".join(base64.b64encode(p) + b" %d\n" % i for i, p in enumerate(order)))
    va, vb = load_vocab(tmp_path / "a" / "vocab.json"), load_vocab(tmp_path / "b" / "x.tiktoken")
    a, b = shared_tokens(va, vb, 5, 8)
    assert a.dtype == np.int64 and b.dtype == np.int64
    assert list(a) == sorted(a) and len(set(a.tolist())) == len(a)
    expected = sorted((i, order.index(p)) for i, p in enumerate(PIECES) if i < 5 and order.index(p) < 8)
    assert list(zip(a.tolist(), b.tolist(), strict=False)) == expected
    empty = shared_tokens(va, vb, 0, 8)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_duplicate_keys_keep_the_lowest_id(tmp_path: Path) -> None:
    (tmp_path / "t.tiktoken").write_bytes(b"YQ== 5\nYQ== 2\nYg== 3\n")
    v = load_vocab(tmp_path / "t.tiktoken")
    assert v.keys == {b"a": 2, b"b": 3} and v.size == 6


def test_find_tokenizer_file_order(tmp_path: Path) -> None:
    assert find_tokenizer_file(tmp_path) is None
    for name in ("vocab.txt", "vocab.json", "z.tiktoken", "a.tiktoken", "tokenizer.model", "tokenizer.json"):
        (tmp_path / name).write_text("x")
        assert find_tokenizer_file(tmp_path) == tmp_path / name
    assert TOKENIZER_FILES[0] == "tokenizer.json"


def test_vocab_for_a_checkpoint_directory(tmp_path: Path) -> None:
    from awmtrace import synth
    from awmtrace.io import open_source

    folder = synth.write_hf(synth.random_llama(hidden=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab=300, ffn=16), tmp_path / "m")
    src = open_source(folder)
    try:
        v = vocab_for(src)
        assert v is not None and v.kind == "bytelevel" and v.source.startswith("tokenizer.json")
        assert len(v) == 300 and v.keys[b" "] == 32
        (folder / "tokenizer.json").unlink()
        assert vocab_for(src) is None
        (folder / "vocab.txt").write_text("[CLS]\nhello\n")
        v = vocab_for(src)
        assert v is not None and v.keys == {"[CLS]": 0, b" hello": 1}
    finally:
        src.close()


def test_large_vocab_loads_fast(tmp_path: Path) -> None:
    """A Qwen-sized (151643 + specials) byte-level tokenizer.json and tiktoken file."""
    rng = random.Random(0)
    seen: dict[bytes, None] = {bytes([b]): None for b in range(256)}
    while len(seen) < 151643:
        seen.setdefault(rng.randbytes(rng.randint(2, 7)), None)
    pieces = list(seen)
    tok = Tokenizer(models.BPE({as_bytelevel(p): i for i, p in enumerate(pieces)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    (tmp_path / "json").mkdir()
    tok.save(str(tmp_path / "json" / "tokenizer.json"))
    (tmp_path / "qwen.tiktoken").write_bytes(b"".join(base64.b64encode(p) + b" %d\n" % i for i, p in enumerate(pieces)))

    t0 = time.perf_counter()
    a = load_vocab(tmp_path / "json" / "tokenizer.json")
    b = load_vocab(tmp_path / "qwen.tiktoken")
    ids_a, ids_b = shared_tokens(a, b, a.size, b.size)
    elapsed = time.perf_counter() - t0
    assert len(ids_a) == 151643 + 3 and np.array_equal(ids_a, ids_b)
    assert elapsed < 3.0, f"loading and matching two 150k vocabularies took {elapsed:.2f}s"


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _real_tokenizer_json() -> bytes:
    tok = Tokenizer(models.BPE({"a": 0, "b": 1}, merges=[]))
    return tok.to_str().encode()


BAD_FILES: list[tuple[str, bytes]] = [
    ("tokenizer.json", b""),
    ("tokenizer.json", b"{"),
    ("tokenizer.json", b"\xff\xfe{}"),
    ("tokenizer.json", b"[1, 2]"),
    ("tokenizer.json", b'{"model": {}}'),
    ("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}}'),
    ("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}'),
    ("tokenizer.json", b'{"model": {"type": "Unigram", "vocab": [[]]}}'),
    ("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {}, "merges": []}}'),
    ("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 1}]}'),
    ("tokenizer.model", b""),
    ("tokenizer.model", b"\x0a\x05garbage that is not a protobuf" * 3),
    ("ice_text.model", bytes(range(256)) * 4),
    ("x.tiktoken", b""),
    ("x.tiktoken", b"YQ==\n"),
    ("x.tiktoken", b"!!!! 1\n"),
    ("x.tiktoken", b"YQ== one\n"),
    ("x.tiktoken", b"YQ== -1\n"),
    ("vocab.json", b"[1]"),
    ("vocab.json", b'{"a": "1"}'),
    ("vocab.json", b"{"),
    ("vocab.txt", b"\xff\xfe\x00"),
    ("vocab.txt", b"\n\n"),
    ("merges.bin", b"x"),
]


@pytest.mark.parametrize(("name", "content"), BAD_FILES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_FILES)])
def test_bad_files_raise_vocabulary_error_naming_the_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VocabularyError) as info:
        load_vocab(path)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_truncated_real_files_raise_vocabulary_error(tmp_path: Path, spm_models: dict[str, bytes]) -> None:
    cases = {
        "tokenizer.json": _truncated(_real_tokenizer_json()),
        "tokenizer.model": _truncated(spm_models["unigram"]),
        "ice_text.model": spm_models["bpe"][:-7],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(VocabularyError, match=name):
            load_vocab(tmp_path / name)


def test_missing_file_raises_vocabulary_error(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="tokenizer.json"):
        load_vocab(tmp_path / "tokenizer.json")
