"""The per-model cache: reuse without reading weights, corrupt and other-version entries rebuilt, LRU eviction, clear errors."""

from __future__ import annotations

import errno
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.collections import cache as cache_mod
from awmtrace.collections import extract as extract_mod
from awmtrace.collections.cache import CacheError, ModelCache
from awmtrace.collections.matrix import matrix
from awmtrace.io import fingerprint as fp_mod
from awmtrace.io.raw import RawBuffer
from awmtrace.io.safetensors_dir import SafetensorsSource
from awmtrace.pipeline import open_model


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("three")
    base = synth.random_llama(hidden=128, n_layers=2, seed=0)
    models = [base, synth.drift(base, 0.1, seed=3), synth.random_llama(hidden=128, n_layers=2, seed=9)]
    return [synth.write_hf(m, root / f"m{i}") for i, m in enumerate(models)]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every weight read (tensor reads, row readers, fingerprint hashing) appends the tensor name."""
    seen: list[str] = []
    real_many, real_rows, real_bytes = SafetensorsSource.read_many, SafetensorsSource.row_reader, fp_mod._stored_bytes
    real_read = SafetensorsSource.read

    def read(self: Any, name: str) -> Any:
        seen.append(name)
        return real_read(self, name)

    def read_many(self: Any, names: Any) -> Any:
        names = list(names)
        seen.extend(names)
        return real_many(self, names)

    def row_reader(self: Any, name: str) -> Any:
        seen.append(name)
        return real_rows(self, name)

    def stored_bytes(source: Any, name: str) -> Any:
        seen.append(name)
        return real_bytes(source, name)

    # Raw reads (O_DIRECT into reused buffers, as compare reads layers) know only a file and offset.
    where: dict[tuple[str, int], str] = {}
    real_layout, real_raw = SafetensorsSource.raw_layout, RawBuffer.read

    def raw_layout(self: Any, name: str) -> Any:
        layout = real_layout(self, name)
        if layout is not None:
            where[(str(layout.path), layout.offset)] = name
        return layout

    def raw_read(self: Any, layout: Any, direct: bool = False) -> Any:
        seen.append(where[(str(layout.path), layout.offset)])
        return real_raw(self, layout, direct)

    real_rows_raw = extract_mod.iter_raw_rows

    def iter_raw_rows(layout: Any, rows_per_block: int, what: str) -> Any:  # the cached embedding, copied as stored
        seen.append(where[(str(layout.path), layout.offset)])
        return real_rows_raw(layout, rows_per_block, what)

    monkeypatch.setattr(SafetensorsSource, "raw_layout", raw_layout)
    monkeypatch.setattr(RawBuffer, "read", raw_read)
    monkeypatch.setattr(extract_mod, "iter_raw_rows", iter_raw_rows)
    monkeypatch.setattr(SafetensorsSource, "read_many", read_many)
    monkeypatch.setattr(SafetensorsSource, "read", read)
    monkeypatch.setattr(SafetensorsSource, "row_reader", row_reader)
    monkeypatch.setattr(fp_mod, "_stored_bytes", stored_bytes)
    return seen


NEEDED_IN_LAYER = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "input_layernorm.weight")


def test_each_model_read_once_and_second_run_reads_nothing(three: list[Path], tmp_path: Path, reads: list[str]) -> None:
    first = matrix(three, cache_dir=tmp_path)
    # At most one fingerprint pass and one extraction pass per model (3 models, each in 2 pairs), never one per pair;
    # plain tensors are hashed straight from the file, so not every pass shows up here.
    counts = Counter(reads)
    needed = {"model.embed_tokens.weight"} | {f"model.layers.{i}.{t}" for i in (0, 1) for t in NEEDED_IN_LAYER}
    assert set(counts) == needed, counts
    assert all(3 <= c <= 3 * 2 for c in counts.values()), counts
    reads.clear()
    second = matrix(three, cache_dir=tmp_path)
    assert reads == []
    assert second.score == first.score


def _entry_dir(cache_dir: Path, model: Path) -> Path:
    with open_model(model) as m:
        return ModelCache(cache_dir).get(m).path


def test_corrupt_gram_is_detected_and_rebuilt(three: list[Path], tmp_path: Path) -> None:
    first = matrix(three[:2], cache_dir=tmp_path)
    path = _entry_dir(tmp_path, three[0]) / "q.npy"
    with path.open("r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        fh.write(b"\x7f" * 8)
    again = matrix(three[:2], cache_dir=tmp_path)
    assert any("rebuilt" in n and "checksum" in n for n in again.notes), again.notes
    assert again.score == first.score


@pytest.mark.parametrize("damage", ["stats", "manifest", "version", "missing"])
def test_damaged_or_other_version_entry_is_rebuilt(three: list[Path], tmp_path: Path, damage: str) -> None:
    entry = _entry_dir(tmp_path, three[0])
    if damage == "stats":
        arr = np.load(entry / "stats.npy")
        arr[0, 0, 0] += 1.0
        np.save(entry / "stats.npy", arr)
    elif damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    elif damage == "version":
        m = json.loads((entry / "manifest.json").read_text())
        m["tool_version"] = "0.0.1"
        (entry / "manifest.json").write_text(json.dumps(m))
    else:
        (entry / "embed.npy").unlink()
    cache = ModelCache(tmp_path)
    with open_model(three[0]) as model:
        rebuilt = cache.get(model)
    assert cache.builds == 1
    assert any("rebuilt" in n for n in cache.notes)
    assert rebuilt.path == entry and rebuilt.manifest["tool_version"] == cache_mod.__version__


def test_lru_eviction_keeps_recent_and_protected(three: list[Path], tmp_path: Path) -> None:
    dirs = [_entry_dir(tmp_path, m) for m in three]
    for k, d in enumerate(dirs):  # m0 oldest, m2 newest
        os.utime(d / "last_used", (time.time() - 100 + k, time.time() - 100 + k))
    size = cache_mod._du(dirs[0])
    cache = ModelCache(tmp_path, limit_bytes=2 * size + size // 2)
    assert cache.evict() == [dirs[0].name]
    assert not dirs[0].exists() and dirs[1].exists() and dirs[2].exists()
    tight = ModelCache(tmp_path, limit_bytes=1)
    assert tight.evict(protect={dirs[1].name}) == [dirs[2].name]
    assert dirs[1].exists()
    assert any("limit" in n for n in tight.notes)


def test_matrix_applies_the_size_limit(three: list[Path], tmp_path: Path) -> None:
    matrix(three[:2], cache_dir=tmp_path)
    before = {d["key"] for d in ModelCache(tmp_path).entries()}
    matrix([three[1], three[2]], cache_dir=tmp_path, cache_limit_bytes=1)
    after = {d["key"] for d in ModelCache(tmp_path).entries()}
    assert len(after) == 2 and after != before  # m0's entry, unused by this run, went first


def test_unwritable_or_full_cache_gives_one_clear_error(three: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for code, words in ((errno.EROFS, "not writable"), (errno.ENOSPC, "is full")):

        def fail(*args: Any, code: int = code, **kwargs: Any) -> str:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(cache_mod.tempfile, "mkdtemp", fail)
        with open_model(three[0]) as model, pytest.raises(CacheError, match=words):
            ModelCache(tmp_path / "c").get(model)
    out = matrix(three[:2], cache_dir=tmp_path / "c")  # in the matrix: both models reported, nothing crashes
    assert all("not writable" in m["error"] or "is full" in m["error"] for m in out.models) and out.failed


def test_killed_build_leaves_no_entry(three: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from awmtrace.collections import extract

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "_write_layers", boom)
    with open_model(three[0]) as model, pytest.raises(KeyboardInterrupt):
        ModelCache(tmp_path).get(model)
    assert list((tmp_path / "entries").iterdir()) == []


def test_cache_cli_list_and_clean(three: list[Path], tmp_path: Path) -> None:
    matrix(three[:2], cache_dir=tmp_path)
    runner = CliRunner()
    out = runner.invoke(main, ["cache", "list", "--cache-dir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert len(data["entries"]) == 2 and all(e["valid"] for e in data["entries"])
    out = runner.invoke(main, ["cache", "clean", "--cache-dir", str(tmp_path)])
    assert out.exit_code == 0 and "removed 2" in out.output
    assert ModelCache(tmp_path).entries() == []


def test_matrix_cli_outputs(three: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    listing = tmp_path / "models.txt"
    listing.write_text(f"# a collection\n{three[1]}\n{three[2]}\n")
    args = ["matrix", str(three[0]), "--from", str(listing), "--cache-dir", str(tmp_path / "c"), "--store", str(tmp_path / "r.sqlite")]
    out = runner.invoke(main, [*args, "--json", "--csv", str(tmp_path / "p.csv"), "--plot", str(tmp_path / "h.png"),
                               "--report", str(tmp_path / "c.html")])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [m["input"] for m in data["models"]] == [str(p) for p in three]
    assert data["families"] == [[0, 1], [2]]
    assert data["tree"][0]["directed"] is False and "no evidence" in data["tree"][0]["evidence"][0]
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert "Lineage tree" in (tmp_path / "c.html").read_text()
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4
    text = runner.invoke(main, [*args, "--tree"])
    assert text.exit_code == 0 and "Lineage tree" in text.output and "no evidence" in text.output
    bad = runner.invoke(main, [*args, str(tmp_path / "missing")])
    assert bad.exit_code == 5 and "failed" in bad.output  # 5: incomplete


def test_feature_form_for_grouped_query_k_and_mixed_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from awmtrace import compare
    from awmtrace.collections import extract
    from awmtrace.collections.pairs import score_pair

    base = synth.random_llama(hidden=256, n_layers=2, n_kv_heads=1, seed=0)  # K: 32 x 256, stored as samples
    paths = [
        synth.write_hf(m, tmp_path / f"g{i}")
        for i, m in enumerate([base, synth.drift(base, 0.2, seed=4), synth.random_llama(n_layers=2, n_kv_heads=1, seed=8)])
    ]

    def entry(cache_dir: Path, p: Path) -> Any:
        with open_model(p) as m:
            return ModelCache(cache_dir).get(m)

    feat = [entry(tmp_path / "c1", p) for p in paths]
    assert [e.form(0) for e in feat] == ["gram"] * 3 and [e.form(1) for e in feat] == ["feature"] * 3
    monkeypatch.setattr(extract, "FEATURE_RATIO", 10**6)
    gram = entry(tmp_path / "c2", paths[1])
    assert gram.form(1) == "gram"
    for ea, eb, pa, pb in (
        (feat[0], feat[1], paths[0], paths[1]),
        (feat[0], feat[2], paths[0], paths[2]),
        (feat[0], gram, paths[0], paths[1]),
    ):
        want = compare(pa, pb, device="cpu")
        got = score_pair(ea, eb)
        assert got.score_k == pytest.approx(want.score_k, abs=2e-5)
        assert got.score == pytest.approx(want.score, abs=2e-5)


def test_large_files_are_trusted_while_unchanged_and_verified_on_demand(three: list[Path], tmp_path: Path) -> None:
    matrix(three[:2], cache_dir=tmp_path)
    entry = _entry_dir(tmp_path, three[0])
    q = entry / "q.npy"
    st = q.stat()
    with q.open("r+b") as fh:  # damage a Gram in place, then put the file's time back as a copy tool might
        fh.seek(-100, os.SEEK_END)
        fh.write(b"\x7f" * 8)
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ModelCache(tmp_path).open(entry.name) is not None  # the quick check trusts size and time (documented)
    listed = {d["key"]: d for d in ModelCache(tmp_path).entries(verify=True)}
    assert not listed[entry.name]["valid"] and "checksum" in listed[entry.name]["problem"]
    out = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(tmp_path), "--verify", "--json"])
    assert out.exit_code == 0 and [e["valid"] for e in json.loads(out.output)["entries"]].count(False) == 1
    os.utime(q)  # a time that differs from the manifest's: now every open checks the checksums
    cache = ModelCache(tmp_path)
    assert cache.open(entry.name) is None and any("checksum" in n for n in cache.notes)


def test_weights_at_the_float32_limits_are_cached_and_scored(tmp_path: Path) -> None:
    import dataclasses

    from awmtrace import compare

    base = synth.random_llama(hidden=256, n_layers=2, n_kv_heads=1, seed=0)  # Q cached as a Gram, K as samples
    huge = dataclasses.replace(base, q=[q * np.float32(1e25) for q in base.q], k=[k * np.float32(1e25) for k in base.k])
    paths = [synth.write_hf(m, tmp_path / name) for m, name in ((base, "base"), (huge, "huge"))]
    out = matrix(paths, cache_dir=tmp_path / "c")
    assert out.score[0][1] == pytest.approx(compare(*paths, device="cpu").score, abs=1e-4)
    assert out.score[0][1] > 0.999
