"""Malformed data at format boundaries: JSON inputs, config sizes, weight dtypes, .bin files, --null files, results stores.

Each gives one line naming the file (and the field, row or tensor), a
non-zero exit and no traceback. Every input is generated here.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import AwmError, NotARegularFile, PermissionDenied
from awmtrace.io import open_source

sys.path.insert(0, str(Path(__file__).parent))
from hostile import CLI, assert_refused, compare, guarded


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    return synth.write_hf(m, tmp_path_factory.mktemp("good") / "model")


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
