"""The cache layout and its snapshots (``AWMTRACE_CACHE``, default ``$HF_HOME/awmtrace``)::

    models--org--name/refs/<revision>                      commit the revision pointed at
    models--org--name/snapshots/<commit><variant>/         complete, published by one rename
    models--org--name/partial/<commit><variant>/           in progress: *.part files + state

``<variant>`` is empty for the embedding and attention tensors, ``+ffn`` when
the FFN inputs are kept too, ``+all`` for every tensor, and ``+<file>`` for
one GGUF file of the repo (found again by its file name or quant tag). A snapshot directory exists only once every file
in it is complete and checked; its manifest (``awm-fetch.json``) records
each file's size and sha256, and ``commit_date``: when the commit was made on
the Hub (its ``lastModified`` for that revision), the model's upload date. A
full snapshot already in the Hugging Face cache (``huggingface-cli download``)
is used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from awmtrace.errors import AwmError
from awmtrace.io.base import load_json, plain_relative_name, read_json
from awmtrace.io.hub.repo import COMMIT_RE, RepoRef, gguf_matches, hf_hub_cache
from awmtrace.io.safetensors_dir import shard_name

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "INDEX_SAFETENSORS",
    "INDEX_BIN",
    "CHUNK_BYTES",
    "variant",
    "repo_dir",
    "read_manifest",
    "snapshot_ok",
    "find_snapshot",
    "read_ref",
    "write_ref",
    "hf_cache_snapshot",
    "snapshot_identity",
    "snapshot_commit_date",
    "iso_date",
    "atomic_write_text",
    "sha256_file",
    "git_blob_sha1",
    "now",
]

log = logging.getLogger("awmtrace.hub")

MANIFEST_NAME = "awm-fetch.json"
MANIFEST_FORMAT = "awmtrace-hub-snapshot"
MANIFEST_VERSION = 1
INDEX_SAFETENSORS = "model.safetensors.index.json"
INDEX_BIN = "pytorch_model.bin.index.json"
CHUNK_BYTES = 1 << 20


def variant(commit: str, kind: str) -> str:
    """The snapshot folder name: ``kind`` is ``""`` (attention), ``"ffn"``, ``"all"`` or a GGUF file name."""
    if not kind:
        return commit
    return f"{commit}+{re.sub(r'[^A-Za-z0-9._-]', '_', kind)}"


def _candidates(snaps: Path, commit: str, kind: str) -> list[Path]:
    """Snapshot folders that may hold what ``kind`` needs, the smallest first (GGUF: every file variant of the commit)."""
    wider = {"": ["", "ffn", "all"], "ffn": ["ffn", "all"], "all": ["all"]}.get(kind)
    if wider is not None:
        return [snaps / variant(commit, k) for k in wider]
    return sorted(snaps.glob(f"{commit}+*"))


def repo_dir(root: Path, ref: RepoRef) -> Path:
    return root / ref.folder_name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = load_json(folder / MANIFEST_NAME, "fetch manifest")
    except AwmError:  # absent or damaged: the snapshot is not ours, or not complete
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def _sized_ok(folder: Path, entry: Any, verify: bool) -> bool:
    try:
        name = entry.get("name")
        if not isinstance(name, str) or not plain_relative_name(name):
            log.warning("%s: the manifest names %r, not a file of the snapshot; the snapshot will be fetched again", folder, name)
            return False
        path = folder / name
        if not path.is_file() or path.stat().st_size != int(entry["size"]):
            log.warning("%s: %s is missing or resized; the snapshot will be fetched again", folder, path.name)
            return False
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return False
    if verify and sha256_file(path).hexdigest() != entry.get("sha256"):
        log.warning("%s: %s does not match its recorded sha256; the snapshot will be fetched again", folder, path.name)
        return False
    return True


def snapshot_ok(folder: Path, verify: bool = False) -> dict[str, Any] | None:
    """The manifest of a complete snapshot, or ``None`` when files are missing, resized or (``verify``) altered."""
    data = read_manifest(folder)
    try:
        if data is None or int(data.get("format_version", 0)) > MANIFEST_VERSION:
            return None
    except (TypeError, ValueError):
        return None
    files = data.get("files", [])
    if not isinstance(files, list) or not all(_sized_ok(folder, entry, verify) for entry in files):
        return None
    return data


def find_snapshot(root: Path, ref: RepoRef, commit: str, kind: str, verify: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """A complete lean snapshot of ``commit`` holding what ``kind`` needs, with its manifest."""
    snaps = repo_dir(root, ref) / "snapshots"
    gguf = kind not in ("", "ffn", "all")
    for folder in _candidates(snaps, commit, kind):
        data = snapshot_ok(folder, verify)
        if data is not None and (not gguf or gguf_matches([str(data.get("file") or "")], kind)):
            return folder, data
    return None


def read_ref(folder: Path, revision: str) -> str | None:
    """The commit a revision pointed at when it was last fetched (``folder``: the repo's cache folder)."""
    try:
        commit = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if COMMIT_RE.match(commit) else None


def write_ref(folder: Path, rev: str, commit: str) -> None:
    if rev == commit:
        return
    path = folder / "refs" / rev
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, commit)
    except OSError as exc:
        log.warning("%s: cannot record that %s is %s (%s)", folder, rev, commit, exc)


def _complete_hf_snapshot(snap: Path) -> bool:
    if not (snap / "config.json").is_file():
        return False
    for index_name in (INDEX_SAFETENSORS, INDEX_BIN):
        index = snap / index_name
        if index.is_file():
            try:
                weight_map = read_json(index, "index")["weight_map"]
                shards = {shard_name(s, index) for s in weight_map.values()}
            except (AwmError, KeyError, AttributeError):  # damaged or hostile: not a snapshot to use
                return False
            return bool(shards) and all((snap / s).is_file() for s in shards)
    return any(snap.glob("*.safetensors")) or any(snap.glob("*.bin"))


def hf_cache_snapshot(ref: RepoRef, commit: str | None) -> Path | None:
    """A complete snapshot in the Hugging Face cache (from ``huggingface-cli download``), if any.

    For a GGUF file reference: that file, when the snapshot holds it.
    """
    repo = hf_hub_cache() / ref.folder_name
    if commit is None:
        rev = ref.revision or "main"
        commit = rev if COMMIT_RE.match(rev) else read_ref(repo, rev)
    if commit is None:
        return None
    snap = repo / "snapshots" / commit
    if ref.file is not None:
        hit = snap / ref.file
        return hit if ref.file.endswith(".gguf") and hit.is_file() else None
    return snap if _complete_hf_snapshot(snap) else None


def snapshot_identity(path: Path) -> str | None:
    """``hf:org/name@commit`` (``...:file`` for one GGUF file) for a snapshot this package or huggingface_hub cached, else ``None``.

    A stable fingerprint of Hub models: the same commit gives the same
    identity wherever and whenever it was fetched.
    """
    path = Path(path)
    data = read_manifest(path) if path.is_dir() else None
    if data is not None:
        file = data.get("file")
        return f"hf:{data.get('repo_id')}@{data.get('commit')}" + (f":{file}" if file else "")
    parts = path.resolve().parts if path.exists() else path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and COMMIT_RE.match(parts[-1]):
        return f"hf:{parts[-3][len('models--') :].replace('--', '/')}@{parts[-1]}"
    return None


def iso_date(value: Any) -> str | None:
    """``value`` (an ISO 8601 time, as the Hub's ``2024-01-03T12:00:00.000Z``) as UTC ``YYYY-MM-DDTHH:MM:SSZ``, else ``None``.

    The Hub's answer is not trusted: anything else (a number, a bad string) gives ``None``, never an error.
    """
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_commit_date(path: Path) -> str | None:
    """When the commit of the lean snapshot holding ``path`` (its folder, or a GGUF file in it) was made on the Hub.

    Read from the snapshot's manifest, as the fetcher recorded it; no network.
    ``None`` for anything else: a local model, a snapshot of the Hugging Face
    cache, or one fetched before dates were recorded.
    """
    path = Path(path)
    data = read_manifest(path if path.is_dir() else path.parent)
    return iso_date(data.get("commit_date")) if data is not None else None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, limit: int | None = None) -> Any:
    """A running sha256 of the first ``limit`` bytes of ``path`` (all of it by default)."""
    h = hashlib.sha256()
    left = path.stat().st_size if limit is None else limit
    with path.open("rb") as fh:
        while left > 0:
            block = fh.read(min(CHUNK_BYTES, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
