"""Hostile and malformed files: refused with one line naming the file, fast, in bounded memory, never hanging.

Every hostile file is generated here (tmp_path). Checks that must not hang or
blow up memory run in a subprocess with a hard timeout and an address-space
limit (RLIMIT_AS), and assert a non-zero exit, no traceback and the message.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import AwmError, FormatError, NotARegularFile, PermissionDenied
from awmtrace.io import open_source
from awmtrace.io.gguf_file import check_gguf_layout

SRC = str(Path(__file__).resolve().parents[1] / "src")
MEMORY_LIMIT = 2 << 30  # bytes of address space a guarded subprocess may map
TIMEOUT = 120  # seconds before a guarded subprocess counts as hung
CLI = "import sys; from awmtrace.cli import main; sys.argv[0] = 'awm'; main()"
OPENER = "import sys; from pathlib import Path; from awmtrace.io import open_source; open_source(Path(sys.argv[1]))"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    return synth.write_hf(m, tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def tiny() -> synth.SynthModel:
    return synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300, seed=5)


def compare(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["compare", "-q", *args])
    return result.exit_code, result.output


def assert_refused(code: int, output: str, *needles: str) -> None:
    """Non-zero exit, no traceback, and every needle in the (unwrapped) message."""
    assert code != 0, output
    assert "Traceback" not in output, output
    text = " ".join(output.split())  # rich wraps long lines at the terminal width
    for needle in needles:
        assert needle in text, (needle, output)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def guarded(code: str, *args: str) -> tuple[int, str, float]:
    """Run ``python -c code args`` with an address-space limit and a timeout: (exit code, stderr, seconds)."""
    env = dict(os.environ, PYTHONPATH=SRC, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="400")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_limit_memory,  # noqa: PLW1509 - no threads are running in the test process's fork path
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: still running after {TIMEOUT} s")
    return proc.returncode, proc.stderr + proc.stdout, time.monotonic() - start


# ---------------------------------------------------------------- GGUF


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


# ---------------------------------------------------------------- safetensors index


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


# ---------------------------------------------------------------- non-regular files


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


# ---------------------------------------------------------------- permissions


def _deny(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make ``os.open``/``os.listdir`` of ``victim`` fail as they do after ``chmod 000`` (``stat`` still works)."""
    for fn_name in ("open", "listdir"):
        real = getattr(os, fn_name)

        def fake(path, *args, _real=real, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
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


# ---------------------------------------------------------------- JSON inputs


def _with_file(good: Path, dest: Path, name: str, content: bytes | str) -> Path:
    shutil.copytree(good, dest)
    (dest / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return dest


DEEP = "[" * 20000 + "]" * 20000


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("config.json", '{"hidden_size": 1e999}', "1e999 which is not finite"),
        ("config.json", '{"rope_theta": NaN}', "NaN which is not finite"),
        ("config.json", '{"x": ' + DEEP + "}", "nested too deeply"),
        ("config.json", b'{"x": "\xff\xfe"}', "not UTF-8"),
        ("config.json", '{"x": ' + "9" * 5000 + "}", "cannot be read"),
        ("config.json", "[1, 2]", "expected a JSON object"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 100000000000000000000}, "merges": []}}', "from 0 to"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 1e999}, "merges": []}}', "not finite"),
        ("tokenizer.json", DEEP, "nested too deeply"),
        ("model.safetensors.index.json", '{"weight_map": {"a": "model.safetensors"}, "x": 1e999}', "not finite"),
    ],
)
def test_malformed_json_inputs(good: Path, tmp_path: Path, name: str, content: bytes | str, needle: str) -> None:
    model = _with_file(good, tmp_path / "model", name, content)
    code, out = compare(str(good), str(model))
    assert_refused(code, out, name, needle)


def test_oversized_json_is_refused_before_reading(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import awmtrace.io.base as base

    monkeypatch.setattr(base, "MAX_TEXT_BYTES", 1000)
    model = _with_file(good, tmp_path / "model", "config.json", '{"pad": "' + "x" * 2000 + '"}')
    code, out = compare(str(good), str(model))
    assert_refused(code, out, str(model / "config.json"), "config.json of 2011 bytes, more than the 1000")


def test_huge_ids_in_tokenizer_sidecars_are_ignored(good: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(good, model)
    vocab = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    (model / "vocab.json").write_text(json.dumps(vocab))
    (model / "tokenizer.json").unlink()
    sidecar = {"added_tokens_decoder": {"100000000000000000000": {"content": "<x>", "special": True}, "²": {"content": "<y>"}}}
    (model / "tokenizer_config.json").write_text(json.dumps(sidecar))
    (model / "added_tokens.json").write_text(json.dumps({"<z>": 10**20}))
    code, out = compare("--json", str(good), str(model))
    assert code == 0, out


# ---------------------------------------------------------------- config sizes


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"hidden_size": 0}, "hidden_size = 0, which is zero"),
        ({"num_attention_heads": 0}, "num_attention_heads = 0"),
        ({"num_attention_heads": -4}, "negative"),
        ({"num_key_value_heads": 0}, "num_key_value_heads = 0"),
        ({"num_hidden_layers": -1}, "num_hidden_layers = -1"),
        ({"head_dim": -16}, "head_dim = -16"),
        ({"num_attention_heads": 10**20}, "larger than"),
        ({"num_attention_heads": 4.5}, "not a whole number"),
        ({"num_hidden_layers": True}, "a boolean"),
    ],
)
def test_config_sizes_must_be_positive_integers(good: Path, tmp_path: Path, patch: dict, needle: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(good, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(patch)
    (model / "config.json").write_text(json.dumps(cfg))
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "config.json", needle)


def test_empty_embedding_is_refused(tmp_path: Path, good: Path) -> None:
    m = synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300, seed=1)
    model = synth.write_hf(m, tmp_path / "model", extra_tensors={"model.embed_tokens.weight": np.zeros((0, 64), dtype=np.float32)})
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "token embedding has shape (0, 64)")


# ---------------------------------------------------------------- safetensors dtypes


def _fp8(dtype: str) -> np.ndarray:
    import ml_dtypes

    return np.zeros((64, 64), dtype=getattr(ml_dtypes, dtype))


@pytest.mark.parametrize(
    ("make", "stored", "needle"),
    [
        (lambda q: _fp8("float8_e4m3fn"), "F8_E4M3", "scale tensors"),
        (lambda q: _fp8("float8_e5m2"), "F8_E5M2", "scale tensors"),
        (lambda q: (q + 1j * q).astype(np.complex64), "C64", "complex"),
        (lambda q: q > 0, "BOOL", "masks"),
        (lambda q: (q * 100).astype(np.int8), "I8", "integer"),
        (lambda q: (q * 100).astype(np.int32), "I32", "integer"),
    ],
)
def test_safetensors_dtypes_that_are_not_weights(tmp_path: Path, good: Path, make: object, stored: str, needle: str) -> None:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    name = "model.layers.0.self_attn.q_proj.weight"
    model = synth.write_hf(m, tmp_path / "model", extra_tensors={name: make(m.q[0])})  # type: ignore[operator]
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "model.safetensors", repr(name), stored, needle)


def test_f64_safetensors_are_read(tmp_path: Path, good: Path) -> None:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    name = "model.layers.0.self_attn.q_proj.weight"
    model = synth.write_hf(m, tmp_path / "model", extra_tensors={name: m.q[0].astype(np.float64)})
    code, out = compare("--json", str(good), str(model))
    assert code == 0 and json.loads(out)["score"] > 0.99, out


# ---------------------------------------------------------------- PyTorch .bin


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"MYFORMAT\x00\x01" + bytes(range(256)) * 4, "4d 59 46 4f 52 4d 41 54"),
        (b"", "the file is empty"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 64, "1f 8b 08 00"),
    ],
)
def test_bin_that_is_not_a_pickle_or_zip(tmp_path: Path, good: Path, content: bytes, needle: str) -> None:
    pytest.importorskip("torch")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(good / "config.json", model)
    (model / "pytorch_model.bin").write_bytes(content)
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "pytorch_model.bin", "not a PyTorch checkpoint", "custom binary format", needle)


def test_torch_bin_dtypes_that_are_not_weights(tmp_path: Path, good: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_file(str(good / "model.safetensors")).items()}
    name = "model.layers.0.self_attn.q_proj.weight"
    state[name] = torch.complex(state[name], state[name])
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(good / "config.json", model)
    shutil.copy(good / "tokenizer.json", model)
    torch.save(state, model / "pytorch_model.bin")
    code, out = compare(str(good), str(model))
    assert_refused(code, out, "pytorch_model.bin", repr(name), "complex64", "complex numbers")


# ---------------------------------------------------------------- config.json beside a single weights file


def test_config_beside_a_single_file_is_read(good: Path, tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    shutil.copytree(good, folder)
    with open_source(folder / "model.safetensors") as src:
        assert src.config.get("num_attention_heads") == 4
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_attention_heads"] = 0
    (folder / "config.json").write_text(json.dumps(cfg))
    code, out = compare(str(good), str(folder / "model.safetensors"))
    assert_refused(code, out, str(folder / "config.json"), "num_attention_heads = 0")


# ---------------------------------------------------------------- --null files


def _null(**fields: object) -> dict[str, object]:
    data: dict[str, object] = {"format": "awmtrace-null", "format_version": 1, "name": "t", "mean": 0.01, "std": 0.02, "n": 3}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not _MISSING}


_MISSING = object()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"mean": "abc"}, "field 'mean' is 'abc'"),
        ({"mean": _MISSING}, "field 'mean' is missing"),
        ({"mean": [1]}, "field 'mean' is [1]"),
        ({"mean": 10**400}, "field 'mean'"),
        ({"std": True}, "field 'std' is True"),
        ({"n": "many"}, "field 'n' is 'many'"),
        ({"n": 2.5}, "field 'n' is 2.5; expected a whole number"),
        ({"n": {"a": 1}}, "field 'n'"),
        ({"format_version": "x"}, "field 'format_version'"),
        ({"format_version": [2]}, "field 'format_version'"),
        ({"scores": 5}, "field 'scores' is 5"),
        ({"scores": ["a", "b", "c"]}, "field 'scores' is 'a'"),
        ({"scores": [1, 2, 10**400]}, "field 'scores'"),
        ({"provenance": [1, 2]}, "field 'provenance' is [1, 2]"),
        ({"provenance": "text"}, "field 'provenance'"),
    ],
)
def test_malformed_null_files_name_the_field(tmp_path: Path, good: Path, fields: dict, needle: str) -> None:
    path = tmp_path / "null.json"
    path.write_text(json.dumps(_null(**fields)))
    code, out = compare("--null", str(path), str(good), str(good))
    assert_refused(code, out, str(path), needle)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"format": "awmtrace-null", "mean": 1e999, "std": 1, "n": 3}', "1e999 which is not finite"),
        ('{"format": "awmtrace-null", "mean": 0, "std": Infinity, "n": 3}', "Infinity which is not finite"),
        ("[" * 20000 + "]" * 20000, "nested too deeply"),
        ('{"format": "awmtrace-null", "mean": 0, "std": 1, "n": ' + "9" * 5000 + "}", "cannot be read"),
    ],
)
def test_null_files_that_do_not_parse(tmp_path: Path, good: Path, text: str, needle: str) -> None:
    path = tmp_path / "null.json"
    path.write_text(text)
    code, out = compare("--null", str(path), str(good), str(good))
    assert_refused(code, out, str(path), needle)


# ---------------------------------------------------------------- results store


def _store_with_one_row(path: Path) -> tuple[str, str]:
    from awmtrace.store import ResultsStore, StoredRecord
    from awmtrace.suites import get_suite

    a, b = get_suite("cpt_pairs").pairs[0]
    result = {"score": 0.9, "score_q": 0.9, "score_k": 0.9, "z": 10.0, "p_value": 1e-5, "verdict": {"label": "related"}}
    with ResultsStore(path) as store:
        store.put(StoredRecord.create(name_a=a, name_b=b, suite="cpt_pairs", label="related", result=result))
    return a, b


@pytest.mark.parametrize(
    ("sql_value", "needle"),
    [
        ("'{'", "unreadable JSON"),
        ("X'FFFE00'", "unreadable JSON"),
        ("'[1, 2]'", "the result is list"),
        ("""'{"score": "abc"}'""", "result field 'score' is 'abc'"),
        ("""'{"p_value": "0.1"}'""", "result field 'p_value'"),
        ("""'{"verdict": "related"}'""", "result field 'verdict' is str"),
        ("'" + "[" * 20000 + "]" * 20000 + "'", "unreadable JSON"),
    ],
)
def test_damaged_row_in_suite_report_names_the_row(tmp_path: Path, sql_value: str, needle: str) -> None:
    path = tmp_path / "r.sqlite"
    a, b = _store_with_one_row(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE results SET result = {sql_value}")
    res = CliRunner().invoke(main, ["suite", "report", "cpt_pairs", "--store", str(path)])
    assert_refused(res.exit_code, res.output, str(path), "damaged row", f"{a} vs {b}", needle)


def test_read_only_store_opens_for_reading(tmp_path: Path) -> None:
    from awmtrace.errors import StoreError
    from awmtrace.store import ResultsStore, StoredRecord

    path = tmp_path / "r.sqlite"
    a, _ = _store_with_one_row(path)
    with ResultsStore(path, readonly=True) as store:
        assert store.readonly and len(store) == 1 and store.records()[0].name_a == a
        with pytest.raises(StoreError, match="opened read-only"):
            store.put(StoredRecord.create(name_a="x", name_b="y", result={}))
    with sqlite3.connect(path) as conn:  # the file was not changed
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_store_this_user_may_not_write_is_read_for_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a user without write permission sees it (tests run as root, who may write anything).
    path = tmp_path / "r.sqlite"
    a, b = _store_with_one_row(path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *args, **kw: False if mode & os.W_OK else real_access(p, mode, *args, **kw))
    res = CliRunner().invoke(main, ["suite", "report", "cpt_pairs", "--store", str(path), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert a in res.output and "0.9" in res.output


def test_read_only_store_for_real_when_not_root(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "r.sqlite"
    a, _ = _store_with_one_row(path)
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this process writes whatever the mode (root)")
        res = CliRunner().invoke(main, ["suite", "report", "cpt_pairs", "--store", str(path), "--format", "csv"])
        assert res.exit_code == 0 and a in res.output, res.output
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)


def test_fifo_as_store_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "r.sqlite"
    os.mkfifo(fifo)
    code, err, seconds = guarded(CLI, "suite", "report", "cpt_pairs", "--store", str(fifo))
    assert_refused(code, err, "r.sqlite", "FIFO", "not a regular file")
    assert seconds < 60


def test_errors_are_awm_errors() -> None:
    assert issubclass(NotARegularFile, AwmError) and issubclass(PermissionDenied, AwmError)
