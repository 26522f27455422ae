"""The results store: round trips, keys, refusals, and surviving kill -9."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace.cli import main
from awmtrace.errors import StoreError
from awmtrace.store import ResultsStore, StoredRecord, model_fingerprint, record_key


def _result(score: float) -> dict:
    return {"score": score, "score_q": score, "score_k": score, "z": (score - 0.00375) / 0.0028, "verdict": {"label": "related"}}


def _record(a: str = "m1", b: str = "m2", score: float = 0.9, **kw: object) -> StoredRecord:
    return StoredRecord.create(
        suite=kw.pop("suite", "s"), name_a=a, name_b=b, result=_result(score), label="related", category="SFT",
        fingerprint_a="fa", fingerprint_b="fb", options={"align": "vocab"}, **kw,
    )  # fmt: skip


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.sqlite"
    with ResultsStore(path) as store:
        rec = _record()
        store.put(rec)
        store.put(_record("m1", "m3", 0.5, suite="other"))
        assert store.has(rec.key) and not store.has("0" * 64)
        assert len(store) == 2
    with ResultsStore(path, create=False) as store:
        got = store.records("s")
        assert got == [rec]
        assert [r.suite for r in store.records()] == ["s", "other"]
        assert store.latest("s", "m1", "m2") == rec and store.latest("s", "m2", "m1") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.suite = "x"  # type: ignore[misc]


def test_the_key_covers_inputs_options_and_version() -> None:
    base = record_key("s", "a", "b", "fa", "fb", {"align": "vocab"}, "1.0")
    assert base == record_key("s", "a", "b", "fa", "fb", {"align": "vocab"}, "1.0")
    variants = [
        record_key("t", "a", "b", "fa", "fb", {"align": "vocab"}, "1.0"),
        record_key("s", "b", "a", "fb", "fa", {"align": "vocab"}, "1.0"),
        record_key("s", "a", "b", "fa2", "fb", {"align": "vocab"}, "1.0"),
        record_key("s", "a", "b", "fa", "fb", {"align": "ids"}, "1.0"),
        record_key("s", "a", "b", "fa", "fb", {"align": "vocab"}, "1.1"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert _record().key == record_key("s", "m1", "m2", "fa", "fb", {"align": "vocab"}, _record().tool_version)


def test_files_that_are_not_stores_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n")
    with pytest.raises(StoreError, match="not an SQLite file"):
        ResultsStore(text)
    assert text.read_text() == "hello, this is not a database\n"
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    c.close()
    with pytest.raises(StoreError, match="not an awmtrace results store"):
        ResultsStore(other)
    with pytest.raises(StoreError, match="is a directory"):
        ResultsStore(tmp_path)
    with pytest.raises(StoreError, match="no results store here"):
        ResultsStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with ResultsStore(empty) as store:
        assert len(store) == 0


def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(_record())
    c = sqlite3.connect(path)
    c.execute("PRAGMA user_version = 99")
    c.close()
    with pytest.raises(StoreError, match=r"newer awmtrace \(store schema 99"):
        ResultsStore(path)
    res = CliRunner().invoke(main, ["suite", "report", "sft_pairs", "--store", str(path)])
    assert res.exit_code == 3 and "newer awmtrace" in res.output and "Traceback" not in res.output


def test_a_killed_writer_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal
        from awmtrace.store import ResultsStore, StoredRecord
        store = ResultsStore({str(path)!r})
        for i in range(3):
            store.put(StoredRecord.create(suite="s", name_a=f"a{{i}}", name_b="b", result={{"score": i}}))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with ResultsStore(path, create=False) as store:
        assert [r.name_a for r in store.records()] == ["a0", "a1", "a2"]
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_model_fingerprints_follow_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    (folder / "config.json").write_text("{}")
    first = model_fingerprint(folder)
    assert first == model_fingerprint(folder) and first.startswith("local:")
    (folder / "model.safetensors").write_bytes(b"y" * 11)
    assert model_fingerprint(folder) != first
    single = model_fingerprint(folder / "model.safetensors")
    (folder / "tokenizer.json").write_text("{}")
    assert model_fingerprint(folder / "model.safetensors") != single
    snap = tmp_path / "hub" / "models--acme--m" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    os.symlink(folder / "config.json", snap / "config.json")
    assert model_fingerprint(snap) == f"hf:acme/m@{'a' * 40}"
