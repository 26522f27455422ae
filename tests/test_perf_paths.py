"""Every fast path gives the numbers of the simple path it replaces.

Buffer-reusing Grams vs fresh ones, the one-pass Gram reductions vs float64
sums, in-place SGEMM accumulation of the cosine matrix vs a float64 product,
raw reads into reused buffers vs the safetensors library, and the pipeline's
raw-read/gather/convert loop vs the plain read_attention loop.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from awmtrace import synth
from awmtrace.core import cka
from awmtrace.core.align import CosineAccumulator
from awmtrace.errors import FormatError, NumericalError
from awmtrace.extract import AlignedReader
from awmtrace.io import raw as io_raw
from awmtrace.io.raw import RawBuffer, read_raw_into
from awmtrace.io.safetensors_dir import SafetensorsSource
from awmtrace.pipeline import compare, open_model
from awmtrace.types import Alignment


def _terms_equal(a: cka.GramTerms, b: cka.GramTerms) -> None:
    np.testing.assert_array_equal(a.gram, b.gram)
    np.testing.assert_allclose(a.row_sums, b.row_sums, rtol=1e-12)
    assert a.total == pytest.approx(b.total, rel=1e-12)
    assert a.self_hsic == pytest.approx(b.self_hsic, rel=1e-12)


def test_gram_terms_into_a_reused_buffer_match_fresh_ones() -> None:
    rng = np.random.default_rng(0)
    ws = cka.GramWorkspace()
    for p in (40, 200, 7):
        x = rng.standard_normal((96, p)).astype(np.float32)
        buf = ws.buffer(96, 0)
        reused = cka.gram_terms(x, out=buf)
        assert np.shares_memory(reused.gram, buf)
        # SYRK writes only the upper triangle: the lower one must still be zero.
        assert not np.tril(buf).any()
        _terms_equal(reused, cka.gram_terms(x))


def test_gram_buffer_must_be_fortran_float32_of_the_right_size() -> None:
    x = np.ones((8, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="Fortran-ordered float32"):
        cka.gram_terms(x, out=np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        cka.gram_terms(x, out=np.zeros((9, 9), dtype=np.float32, order="F"))


def test_workspace_cka_equals_plain_cka_over_a_sequence_of_pairs() -> None:
    rng = np.random.default_rng(1)
    ws = cka.GramWorkspace()
    for i in range(4):
        x = rng.standard_normal((80, 120)).astype(np.float32)
        y = (x[:, :100] * (i / 3) + rng.standard_normal((80, 100))).astype(np.float32)
        assert cka.unbiased_linear_cka(x, y, workspace=ws) == cka.unbiased_linear_cka(x, y)


@pytest.mark.parametrize("order", ["C", "F"])
def test_one_pass_gram_stats_match_float64_sums(order: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cka, "GRAM_SLAB", 16)  # several slabs, the last one partial
    rng = np.random.default_rng(2)
    k = np.triu(rng.standard_normal((100, 100)).astype(np.float32), 1)
    k = np.asarray(k, order=order)
    rows, sq = cka._gram_stats(k)
    k64 = k.astype(np.float64)
    np.testing.assert_allclose(rows, k64.sum(axis=0) + k64.sum(axis=1), rtol=1e-5, atol=1e-5)
    assert sq == pytest.approx(float((k64 * k64).sum()), rel=1e-6)


def test_cosines_accumulated_in_place_match_a_float64_product() -> None:
    rng = np.random.default_rng(3)
    eb = rng.standard_normal((700, 48)).astype(np.float32)
    eo = (eb[:, :40] * 0.5 + rng.standard_normal((700, 40))).astype(np.float32)
    acc = CosineAccumulator(48, 40)
    for start in range(0, 700, 256):
        acc.add(eb[start : start + 256], eo[start : start + 256])
    b64, o64 = eb.astype(np.float64), eo.astype(np.float64)
    ref = (o64.T @ b64) / np.outer(np.linalg.norm(o64, axis=0), np.linalg.norm(b64, axis=0))
    np.testing.assert_allclose(acc.cosines(), ref, atol=2e-6)


@pytest.fixture(scope="module")
def dtype_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    tensors = {"f32": w, "f16": w.astype(np.float16), "bf16": w.astype(ml_dtypes.bfloat16), "i8": (w * 10).astype(np.int8)}
    save_file(tensors, str(root / "model.safetensors"))
    return root / "model.safetensors", tensors


def test_raw_reads_equal_the_safetensors_library(dtype_files: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, tensors = dtype_files
    src = SafetensorsSource(path)
    for name in ("f32", "f16", "bf16"):
        layout = src.raw_layout(name)
        assert layout is not None and layout.shape == (24, 40)
        raw = read_raw_into(layout, np.empty(layout.shape, dtype={"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[layout.dtype]))
        np.testing.assert_array_equal(raw.view(tensors[name].dtype), tensors[name])
        np.testing.assert_array_equal(src.row_reader(name).take(np.array([5, 0, 23])), src.read(name)[[5, 0, 23]])
    assert src.raw_layout("i8") is None  # not a float type: callers fall back to read_many
    src.prefetch(["f32", "bf16"])  # a hint: must not fail


@pytest.fixture(scope="module")
def unaligned_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Tensors at offsets that are not multiples of 4096, the last one ending mid-block at end of file."""
    root = tmp_path_factory.mktemp("unaligned")
    rng = np.random.default_rng(10)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
        "b": rng.standard_normal((70, 130)).astype(np.float32),
        "c": rng.standard_normal((33, 1000)).astype(ml_dtypes.bfloat16),
    }
    save_file(tensors, str(root / "model.safetensors"))
    return root / "model.safetensors", tensors


@pytest.mark.parametrize("direct", [True, False])
def test_raw_buffer_reads_every_tensor_whatever_its_alignment(unaligned_file: tuple[Path, dict[str, np.ndarray]], direct: bool) -> None:
    path, tensors = unaligned_file
    src = SafetensorsSource(path)
    buf = RawBuffer()
    assert any(src.raw_layout(n).offset % io_raw.DIRECT_ALIGN for n in tensors)  # type: ignore[union-attr]
    for name in ("c", "a", "b", "c"):  # grow, shrink and reuse the buffer
        got = buf.read(src.raw_layout(name), direct=direct)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got.view(tensors[name].dtype), tensors[name])


def test_raw_buffer_falls_back_when_o_direct_is_refused(
    unaligned_file: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, tensors = unaligned_file
    real_open = os.open

    def no_direct(p: object, flags: int, *args: object) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(io_raw.os, "open", no_direct)
    layout = SafetensorsSource(path).raw_layout("b")
    np.testing.assert_array_equal(RawBuffer().read(layout, direct=True), tensors["b"])  # type: ignore[arg-type]


@pytest.mark.parametrize("direct", [True, False])
def test_a_truncated_tensor_in_a_raw_buffer_is_a_format_error(
    unaligned_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, direct: bool
) -> None:
    path, _ = unaligned_file
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(path.read_bytes())
    layout = SafetensorsSource(cut).raw_layout("c")
    assert layout is not None
    with open(cut, "r+b") as fh:
        fh.truncate(layout.offset + layout.nbytes - 100)
    with pytest.raises(FormatError, match="truncated"):
        RawBuffer().read(layout, direct=direct)


def test_a_truncated_tensor_is_a_one_line_format_error(dtype_files: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, _ = dtype_files
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(path.read_bytes())
    src = SafetensorsSource(cut)
    layout = src.raw_layout("f32")
    assert layout is not None
    with open(cut, "r+b") as fh:
        fh.truncate(layout.offset + 10)
    with pytest.raises(FormatError, match="truncated") as err:
        read_raw_into(layout, np.empty(layout.shape, dtype=np.float32))
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_bf16_files_read_in_a_fresh_interpreter(dtype_files: tuple[Path, dict[str, np.ndarray]]) -> None:
    # safetensors' numpy reader resolves 'bfloat16' by name, which works only
    # once ml_dtypes is imported; the reader must do that itself.
    path, tensors = dtype_files
    code = (
        "import sys; from pathlib import Path; from awmtrace.io.safetensors_dir import SafetensorsSource; "
        "print(SafetensorsSource(Path(sys.argv[1])).read('bf16').sum())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(float(tensors["bf16"].astype(np.float32).sum()), rel=1e-6)


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bf16pair")
    base = synth.random_llama(hidden=128, n_layers=3, n_heads=4, n_kv_heads=2, vocab=600, seed=5)
    derived, _, _ = synth.permute_hidden(synth.drift(base, 0.2, seed=6), seed=7)
    return (
        synth.write_hf(base, root / "base", dtype="bfloat16", shards=2),
        synth.write_hf(derived, root / "derived", dtype="bfloat16", shards=3),
    )


def _alignment(n: int, seed: int) -> Alignment:
    rng = np.random.default_rng(seed)
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    return Alignment(rng.permutation(n), signs, np.ones(n), "a", n, n, 600, "vocab")


def test_raw_layer_reads_equal_read_attention_plus_index_and_sign(bf16_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = (open_model(p) for p in bf16_pair)
    al = _alignment(128, 8)
    fast = AlignedReader(a, b, al)
    for i in range(3):
        xq, xk = fast.samples("a", i)
        yq, yk = fast.samples("b", i)
        assert xq.flags.f_contiguous and yk.flags.f_contiguous
        qa, ka = (a.source.read(r.name) for r in (a.view.layers[i].q, a.view.layers[i].k))
        qb, kb = (b.source.read(r.name) for r in (b.view.layers[i].q, b.view.layers[i].k))
        np.testing.assert_array_equal(xq, qa[:, al.index].T)
        np.testing.assert_array_equal(xk, ka[:, al.index].T)
        np.testing.assert_array_equal(yq, (qb * al.signs).T)
        np.testing.assert_array_equal(yk, (kb * al.signs).T)
        # The fallback (any reader without raw layouts) gives the same arrays.
        with monkeypatch.context() as m:
            m.setattr(SafetensorsSource, "raw_layout", lambda self, name: None)
            slow = AlignedReader(a, b, al)
            for got, want in zip((*slow.samples("a", i), *slow.samples("b", i)), (xq, xk, yq, yk), strict=True):
                np.testing.assert_array_equal(got, want)
    a.close()
    b.close()


def test_nan_in_a_raw_read_layer_names_the_tensor(tmp_path: Path) -> None:
    m = synth.random_llama(hidden=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab=300, seed=9)
    m.q[0][3, 4] = np.nan
    path = synth.write_hf(m, tmp_path / "nan", dtype="bfloat16")
    with open_model(path) as model:
        sides = AlignedReader(model, model, _alignment(32, 1))
        with pytest.raises(NumericalError, match="q_proj.weight.*NaN"):
            sides.samples("a", 0)


def test_pipeline_scores_and_timings_equal_with_and_without_raw_reads(
    bf16_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="awmtrace"):
        fast = compare(*bf16_pair, device="cpu")
    timings = {k for r in caplog.records for k in getattr(r, "timings", {})}
    assert {"read embeddings", "cost matrix", "assignment", "read layers", "ucka"} <= timings
    monkeypatch.setattr(SafetensorsSource, "raw_layout", lambda self, name: None)
    slow = compare(*bf16_pair, device="cpu")
    assert fast.score > 0.8
    for f, s in zip(fast.layers, slow.layers, strict=True):
        assert f.score_q == pytest.approx(s.score_q, abs=1e-6)
        assert f.score_k == pytest.approx(s.score_k, abs=1e-6)
    assert fast.alignment == slow.alignment


def test_a_failed_background_read_surfaces_as_the_reader_error(bf16_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = RawBuffer.read

    def broken(self: RawBuffer, layout: object, direct: bool = False) -> np.ndarray:
        if direct:  # only the background reads (layers after the first) fail
            raise FormatError(f"{getattr(layout, 'path', '?')}: cannot read: Input/output error")
        return real_read(self, layout, direct)  # type: ignore[arg-type]

    monkeypatch.setattr(RawBuffer, "read", broken)
    with pytest.raises(FormatError, match="Input/output error"):
        compare(*bf16_pair, device="cpu")


def test_prefetched_layers_equal_synchronous_reads(bf16_pair: tuple[Path, Path]) -> None:
    a, b = (open_model(p) for p in bf16_pair)
    al = _alignment(128, 11)
    ahead, plain = AlignedReader(a, b, al), AlignedReader(a, b, al)
    ahead.prefetch("a", 0)
    ahead.prefetch("b", 0)
    for i in range(3):
        got = [x.copy() for x in (*ahead.samples("a", i), *ahead.samples("b", i))]
        ahead.prefetch("a", i + 1)
        ahead.prefetch("b", i + 1)
        if i + 1 < 3:
            assert ahead._pending["a"].index == i + 1  # read in the background
        want = (*plain.samples("a", i), *plain.samples("b", i))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    a.close()
    b.close()


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_nonfinite_count_reads_the_bits_as_numpy_reads_the_values(dtype: str) -> None:
    values = np.array([0.0, -1.5, np.inf, -np.inf, np.nan, 3e4, -0.0, 1e-30], dtype=np.float32)
    stored = {"BF16": (values.view(np.uint32) >> 16).astype(np.uint16), "F16": values.astype(np.float16), "F32": values}[dtype]
    assert io_raw.nonfinite_count(stored, dtype) == 3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_cached_embedding_is_copied_as_stored_and_a_nonfinite_one_refused(tmp_path: Path, dtype: str) -> None:
    from awmtrace.collections.cache import ModelCache
    from awmtrace.errors import NumericalError
    from awmtrace.pipeline import open_model

    m = synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300, seed=1)
    good = synth.write_hf(m, tmp_path / "good", dtype=dtype)
    with open_model(good) as model:
        entry = ModelCache(tmp_path / "cache").get(model)
        want = model.source.row_reader(model.view.embedding.name).take(np.arange(300))
    assert np.array_equal(entry.embedding_to_float32(entry.embedding()[:]), want)
    m.embed[17, 5] = np.inf
    bad = synth.write_hf(m, tmp_path / "bad", dtype=dtype)
    with open_model(bad) as model, pytest.raises(NumericalError, match=r"1 NaN/Inf value\(s\) in the weights"):
        ModelCache(tmp_path / "cache").get(model)
