"""Hostile checkpoint files: refused with one line naming the file, fast, in bounded memory, never hanging.

GGUF headers that lie about counts and lengths, index files that point
outside the model directory, FIFOs/devices/directories under weight names,
and files this user may not read. Every hostile file is generated here;
checks that must not hang run in a guarded subprocess (tests/hostile.py).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from awmtrace import synth
from awmtrace.errors import FormatError, NotARegularFile, PermissionDenied
from awmtrace.io import open_source
from awmtrace.io.gguf_file import check_gguf_layout

sys.path.insert(0, str(Path(__file__).parent))
from hostile import CLI, OPENER, assert_refused, compare, guarded


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    return synth.write_hf(m, tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def tiny() -> synth.SynthModel:
    return synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300, seed=5)


def _s(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key.encode()) + struct.pack("<I", vtype) + payload


def _gguf(kvs: list[bytes] = (), tensors: list[bytes] = (), n_kv: int | None = None, n_tensors: int | None = None) -> bytes:  # type: ignore[assignment]
    head = struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    return b"GGUF" + head + b"".join(kvs) + b"".join(tensors)


def _tensor(name: str, dims: list[int], qtype: int = 0, offset: int = 0) -> bytes:
    return (
        _s(name.encode()) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", qtype, offset)
    )


HOSTILE_GGUF = {
    # The issue's 49-byte file: one uint8 array claiming 2**40 items.
    "array of 2**40 bytes": (_gguf([_kv("a", 9, struct.pack("<IQ", 0, 2**40))]), "array 'a' of 1099511627776 items"),
    "array of 2**40 strings": (_gguf([_kv("a", 9, struct.pack("<IQ", 8, 2**40))]), "array 'a'"),
    "array of 2**40 arrays": (_gguf([_kv("a", 9, struct.pack("<IQ", 9, 2**40))]), "array 'a'"),
    "string of 2**40 bytes": (_gguf([_kv("s", 8, struct.pack("<Q", 2**40))]), "string 's'"),
    "key of 2**40 bytes": (_gguf([struct.pack("<Q", 2**40) + b"k" * 8], n_kv=1), "metadata key"),
    "2**40 metadata entries": (_gguf(n_kv=2**40), "metadata entries"),
    "2**40 tensors": (_gguf(n_tensors=2**40), "tensors"),
    "2**63 of both": (_gguf(n_kv=2**63, n_tensors=2**63), "metadata entries"),
    "nested arrays": (_gguf([_kv("a", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 0))]), "nests arrays"),
    "unknown value type": (_gguf([_kv("a", 77, b"")]), "unknown value type 77"),
    "tensor of 2**64 elements": (_gguf(tensors=[_tensor("t", [2**32, 2**32])]), "tensor 't' ends at byte"),
    "tensor with 2**31 dims": (_gguf(tensors=[_s(b"t") + struct.pack("<I", 2**31) + bytes(16)]), "has 2147483648 dimensions"),
    "tensor of unknown type": (_gguf(tensors=[_tensor("t", [32], qtype=999)]), "unknown type number 999"),
    "version 99": (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), "version 99"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_GGUF))
def test_hostile_gguf_is_refused_at_once(tmp_path: Path, case: str) -> None:
    raw, needle = HOSTILE_GGUF[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(raw)
    start = time.perf_counter()
    with pytest.raises(FormatError) as info:
        check_gguf_layout(path)
    assert time.perf_counter() - start < 0.5
    msg = str(info.value)
    assert "m.gguf" in msg and needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("case", ["array of 2**40 bytes", "array of 2**40 strings", "2**40 metadata entries", "tensor of 2**64 elements"])
def test_hostile_gguf_opener_bounded_time_and_memory(tmp_path: Path, case: str) -> None:
    raw, needle = HOSTILE_GGUF[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(raw)
    code, err, seconds = guarded(OPENER, str(path))
    assert code != 0 and "FormatError" in err and needle in err, err
    assert "MemoryError" not in err
    assert seconds < 60, seconds  # the interpreter start dominates; the check itself is milliseconds


def test_the_49_byte_gguf_through_the_cli(tmp_path: Path, good: Path) -> None:
    raw = HOSTILE_GGUF["array of 2**40 bytes"][0]
    assert len(raw) == 49
    path = tmp_path / "m.gguf"
    path.write_bytes(raw)
    code, err, seconds = guarded(CLI, "compare", "-q", str(good), str(path))
    assert_refused(code, err, "m.gguf", "not a valid GGUF file")
    assert seconds < 60


def test_real_gguf_passes_the_layout_check_quickly(tmp_path: Path, tiny: synth.SynthModel) -> None:
    path = synth.write_gguf(tiny, tmp_path / "ok.gguf", qtype="Q8_0")
    start = time.perf_counter()
    check_gguf_layout(path)
    assert time.perf_counter() - start < 0.5
    with open_source(path) as src:
        assert "token_embd.weight" in src.names()


def test_metadata_item_cap(tmp_path: Path, tiny: synth.SynthModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import awmtrace.io.gguf_file as gguf_file

    path = synth.write_gguf(tiny, tmp_path / "ok.gguf")
    monkeypatch.setattr(gguf_file, "MAX_METADATA_ITEMS", 100)
    with pytest.raises(FormatError, match="more than 100 items"):
        check_gguf_layout(path)


def _write_gguf(path: Path, m: synth.SynthModel, q_tensor: np.ndarray | None = None, **kv: object) -> Path:
    """A minimal llama GGUF (embedding, Q, K) with layer 0's Q replaced by ``q_tensor`` and extra KV fields."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(m.n_layers)
    w.add_embedding_length(m.hidden)
    w.add_head_count_kv(m.n_kv_heads)
    for key, value in kv.items():
        getattr(w, f"add_{type(value).__name__ if not isinstance(value, tuple) else value[0]}")(
            key, value if not isinstance(value, tuple) else value[1]
        )
    if "llama.attention.head_count" not in kv:
        w.add_head_count(m.n_heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(m.tokens)
    w.add_tensor("token_embd.weight", m.embed.astype(np.float32))
    for i in range(m.n_layers):
        q = q_tensor if (i == 0 and q_tensor is not None) else m.q[i].astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_q.weight", q)
        w.add_tensor(f"blk.{i}.attn_k.weight", m.k[i].astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_f64_weights_are_read(tmp_path: Path, tiny: synth.SynthModel) -> None:
    a = _write_gguf(tmp_path / "a.gguf", tiny)
    b = _write_gguf(tmp_path / "b.gguf", tiny, q_tensor=tiny.q[0].astype(np.float64))
    with open_source(b) as src:
        assert src.dtype("blk.0.attn_q.weight") == "F64"
        np.testing.assert_allclose(src.read("blk.0.attn_q.weight"), tiny.q[0].astype(np.float32))
    code, out = compare("--json", str(a), str(b))
    assert code == 0, out
    assert json.loads(out)["score"] > 0.99


def _retype_tensor(path: Path, name: str, qtype: int) -> None:
    """Rewrite the type number of tensor ``name`` in a GGUF tensor table (2-D tensors)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at + 4 + 8 * n_dims, qtype)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("qtype", ["Q8_1", "Q8_K", "I32"])
def test_gguf_type_gguf_cannot_dequantize(tmp_path: Path, tiny: synth.SynthModel, good: Path, qtype: str) -> None:
    import gguf

    path = _write_gguf(tmp_path / "m.gguf", tiny)
    if qtype == "Q8_K":  # 256-value blocks: the 64-wide rows would not be whole blocks, so that is what is refused
        _retype_tensor(path, "blk.0.attn_q.weight", gguf.GGMLQuantizationType[qtype].value)
        with pytest.raises(FormatError, match="not whole blocks of 256"):
            check_gguf_layout(path)
        return
    _retype_tensor(path, "blk.0.attn_q.weight", gguf.GGMLQuantizationType[qtype].value)
    code, out = compare(str(good), str(path))
    assert_refused(code, out, "m.gguf", "'blk.0.attn_q.weight'", qtype, "cannot dequantize")
    assert len(out.strip().splitlines()) <= 3, out


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (("uint64", 2**63), "larger than"),
        (("float32", float("inf")), "not finite"),
        (("uint32", 0), "which is zero"),
        (("int32", -4), "negative"),
        (("float32", 2.5), "not a whole number"),
    ],
)
def test_gguf_metadata_sizes_that_overflow(tmp_path: Path, tiny: synth.SynthModel, good: Path, value: tuple, needle: str) -> None:
    path = _write_gguf(tmp_path / "m.gguf", tiny, **{"llama.attention.head_count": value})
    code, out = compare(str(good), str(path))
    assert_refused(code, out, "m.gguf", "llama.attention.head_count", needle)


def _sharded(good: Path, dest: Path) -> Path:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    return synth.write_hf(m, dest, shards=2)


@pytest.mark.parametrize(
    "shard",
    [
        "../sibling/model.safetensors",
        "../../../../etc/passwd",
        "/etc/passwd",
        "sub/../../sibling/model.safetensors",
        "..\\sibling\\model.safetensors",
        "C:/models/model.safetensors",
        "C:model.safetensors",
        "./model-00001-of-00002.safetensors",
        "",
        7,
    ],
)
def test_index_shard_names_must_stay_inside_the_directory(good: Path, tmp_path: Path, shard: object) -> None:
    model = _sharded(good, tmp_path / "model")
    shutil.copytree(good, tmp_path / "sibling")
    index = model / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data))
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "model.safetensors.index.json", "refused shard name", repr(str(shard))[:30])


def test_index_pointing_into_a_sibling_model_is_not_scored_as_this_model(good: Path, tmp_path: Path) -> None:
    # Every shard of "fake" lives in the sibling folder: before the check it scored RELATED 1.0 against good.
    shutil.copytree(good, tmp_path / "sibling")
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(good / "config.json", fake)
    shutil.copy(good / "tokenizer.json", fake)
    from safetensors import safe_open

    with safe_open(str(good / "model.safetensors"), framework="numpy") as f:
        names = list(f.keys())
    (fake / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, "../sibling/model.safetensors")}))
    code, out = compare("--json", str(good), str(fake))
    assert_refused(code, out, "refused shard name", "../sibling/model.safetensors")


def test_symlinked_shards_stay_allowed(good: Path, tmp_path: Path) -> None:
    # The Hugging Face cache links snapshot files to its blob store: the name is checked, not the link target.
    model = _sharded(good, tmp_path / "model")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for shard in sorted(model.glob("*.safetensors")):
        target = blobs / (shard.name + ".blob")
        shutil.move(shard, target)
        shard.symlink_to(os.path.relpath(target, model))
    code, out = compare("--json", str(good), str(model))
    assert code == 0, out
    assert json.loads(out)["score"] > 0.99


def _fifo_model(good: Path, dest: Path, name: str) -> Path:
    shutil.copytree(good, dest)
    target = dest / name
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    return dest


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "model.safetensors.index.json"])
def test_fifo_in_a_model_directory_is_refused_not_opened(good: Path, tmp_path: Path, name: str) -> None:
    model = _fifo_model(good, tmp_path / "model", name)
    code, err, seconds = guarded(CLI, "compare", "-q", str(good), str(model))
    assert_refused(code, err, name, "FIFO", "not a regular file")
    assert seconds < 60


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors", ".bin"])
def test_fifo_given_as_the_checkpoint_is_refused(good: Path, tmp_path: Path, suffix: str) -> None:
    fifo = tmp_path / f"model{suffix}"
    os.mkfifo(fifo)
    code, err, seconds = guarded(OPENER, str(fifo))
    assert code != 0 and "NotARegularFile" in err and "FIFO" in err, err
    assert seconds < 60


def test_fifo_gguf_in_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "model.gguf")
    with pytest.raises(NotARegularFile, match="model.gguf: is a FIFO"):
        open_source(folder)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_directory_where_a_file_is_expected(good: Path, tmp_path: Path, name: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(good, model)
    (model / name).unlink()
    (model / name).mkdir()
    code, out = compare(str(good), str(model))
    assert_refused(code, out, name, "is a directory, not a regular file")


def test_device_as_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NotARegularFile, match="character device"):
        open_source(Path("/dev/zero"))


def _deny(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make ``os.open``/``os.listdir`` of ``victim`` fail as they do after ``chmod 000`` (``stat`` still works)."""
    for fn_name in ("open", "listdir"):
        real = getattr(os, fn_name)

        def fake(path, *args, _real=real, **kwargs):
            if os.fspath(path) == str(victim):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, fn_name, fake)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", ""])
def test_permission_denied_names_the_path(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(good, model)
    victim = model / name if name else model
    _deny(monkeypatch, victim)
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "permission denied", str(victim))
    assert "no weights here" not in out and "No such file" not in out


def test_permission_denied_for_real_when_not_root(good: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(good, model)
    weights = model / "model.safetensors"
    weights.chmod(0)
    try:
        if os.access(weights, os.R_OK):
            pytest.skip("this process reads files whatever their mode (root)")
        with pytest.raises(PermissionDenied, match="permission denied"):
            open_source(model)
    finally:
        weights.chmod(0o644)
