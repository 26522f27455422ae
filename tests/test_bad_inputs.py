"""Bad input gives one line naming the file and the problem, a non-zero exit, and writes nothing."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import AwmError
from awmtrace.pipeline import open_model


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    return synth.write_hf(m, tmp_path_factory.mktemp("good") / "model")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["compare", "-q", *args])
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output, output
    text = " ".join(output.split())  # rich wraps long lines at the terminal width
    assert text.startswith("error:"), output
    for needle in needles:
        assert needle in text, (needle, output)


def copy_model(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def test_path_that_does_not_exist(good: Path, tmp_path: Path) -> None:
    code, out = run(str(good), str(tmp_path / "nope"))
    assert_one_line_error(code, out, "nope", "no such file")


def test_directory_without_weights(good: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    code, out = run(str(good), str(empty))
    assert_one_line_error(code, out, "empty", "no weights")


def test_truncated_safetensors(good: Path, tmp_path: Path) -> None:
    bad = copy_model(good, tmp_path / "trunc")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "model.safetensors", "not a readable safetensors")


def test_safetensors_header_lying_about_offsets(good: Path, tmp_path: Path) -> None:
    bad = copy_model(good, tmp_path / "lie")
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 4096]  # claims more bytes than the shape needs
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "model.safetensors")


def test_safetensors_header_length_beyond_the_file(good: Path, tmp_path: Path) -> None:
    bad = copy_model(good, tmp_path / "huge")
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "model.safetensors")


@pytest.mark.parametrize("cut", [100, 0.5])
def test_truncated_gguf(tmp_path: Path, good: Path, cut: float) -> None:
    m = synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300)
    path = synth.write_gguf(m, tmp_path / "m.gguf")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(cut if cut > 1 else len(raw) * cut)])
    code, out = run(str(good), str(path))
    assert_one_line_error(code, out, "m.gguf", "GGUF")


def test_gguf_with_absurd_counts_fails_fast(tmp_path: Path, good: Path) -> None:
    m = synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300)
    path = synth.write_gguf(m, tmp_path / "m.gguf")
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + struct.pack("<Q", 2**60) + raw[16:])
    code, out = run(str(good), str(path))
    assert_one_line_error(code, out, "m.gguf")
    # "Fast" is the point: opening the file alone must be refused in well under a second.
    started = time.perf_counter()
    with pytest.raises(AwmError):
        open_model(path)
    assert time.perf_counter() - started < 1.0


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_not_run(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    bad = tmp_path / "evil"
    bad.mkdir()
    shutil.copy(good / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Evil()}))
    monkeypatch.chdir(tmp_path)
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "pytorch_model.bin", "refused")
    assert not (tmp_path / "PWNED").exists()


def test_unknown_architecture_lists_the_tensors_seen(good: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    bad = tmp_path / "alien"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["AlienForCausalLM"], "model_type": "alien"}))
    save_file({"blob.alpha": np.zeros((4, 4), np.float32), "blob.beta": np.zeros((2,), np.float32)}, str(bad / "model.safetensors"))
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "unknown architecture", "AlienForCausalLM", "blob.alpha", "blob.beta")


def test_missing_tokenizer_offers_align_ids(good: Path, tmp_path: Path) -> None:
    bad = copy_model(good, tmp_path / "notok")
    (bad / "tokenizer.json").unlink()
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "no tokenizer found", "--align ids")


def test_too_few_shared_tokens(good: Path, tmp_path: Path) -> None:
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=3)
    m.tokens = [f"zz{i}" for i in range(len(m.tokens))]
    other = synth.write_hf(m, tmp_path / "alien-vocab")
    code, out = run(str(good), str(other))
    assert_one_line_error(code, out, "only 0 tokens are shared")


@pytest.mark.parametrize("where", ["model.layers.1.self_attn.q_proj.weight", "model.embed_tokens.weight"])
def test_nan_weights(good: Path, tmp_path: Path, where: str) -> None:
    from safetensors.numpy import load_file, save_file

    bad = copy_model(good, tmp_path / "nan")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors[where] = tensors[where].copy()
    tensors[where][1, 2] = np.nan
    save_file(tensors, str(bad / "model.safetensors"))
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "NaN")


def test_missing_layer_tensor_names_the_layer(good: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    bad = copy_model(good, tmp_path / "noq")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    code, out = run(str(good), str(bad))
    assert_one_line_error(code, out, "layer 1")


def test_bad_options(good: Path) -> None:
    code, out = run(str(good), str(good), "--weights", "q,k,v")
    assert_one_line_error(code, out, "unknown weight kind")
    code, out = run(str(good), str(good), "--null", "/no/such/null.json")
    assert_one_line_error(code, out, "/no/such/null.json", "does not exist")  # not just "null": the path echoes that word


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_nothing_is_written_into_model_directories(family: dict[str, Path]) -> None:
    root = family["base"].parent
    before = _snapshot(root)
    for name in ("drift", "depth", "width"):
        code, out = run(str(family["base"]), str(family[name]), "--json")
        assert code == 0, out
    code, out = CliRunner().invoke(main, ["inspect", str(family["base"])]).exit_code, ""
    assert code == 0
    assert _snapshot(root) == before
