"""Downloading planned files into the cache: resumable ``.part`` files, checks, and publishing by one rename.

A killed fetch leaves only ``partial/``; the next one resumes each file with
Range from where its ``.part`` ends, if the state file (ETag, size, layout)
still matches. Whole files are checked against the hash the Hub's ETag
stands for (sha256 for LFS files, git blob sha1 for others); assembled
safetensors files are reopened with ``safetensors`` before they are used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from awmtrace.errors import AwmError, FormatError, HubError, first_line
from awmtrace.io.base import load_json
from awmtrace.io.hub.cache import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    atomic_write_text,
    git_blob_sha1,
    now,
    sha256_file,
    snapshot_ok,
    write_ref,
)
from awmtrace.io.hub.http import HubSession
from awmtrace.io.hub.plan import FetchPlan, FilePlan
from awmtrace.io.hub.repo import COMMIT_RE, SHA256_RE

__all__ = ["Published", "publish", "disk_error"]

log = logging.getLogger("awmtrace.hub")


def _write(fh: IO[bytes], chunk: bytes) -> None:
    """Append a received chunk to a ``.part`` file (one place, so tests can make the disk fill up)."""
    fh.write(chunk)


class _DiskError(Exception):
    """A local write failed (disk full, permissions); carries the OSError."""

    def __init__(self, exc: OSError, path: Path) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.path = path


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def disk_error(exc: OSError, path: Path) -> HubError:
    if exc.errno == errno.ENOSPC:
        return HubError(
            f"{path.parent}: disk full while writing {path.name}; the partial file was removed. Free space or set AWMTRACE_CACHE"
        )
    return HubError(f"{path}: cannot write ({exc.strerror or exc}); the partial file was removed")


@dataclass
class _Part:
    """One file being downloaded into ``part_dir``: its ``.part`` file, state file and wanted state."""

    plan: FilePlan
    part_dir: Path

    @property
    def final(self) -> Path:
        return self.part_dir / self.plan.name

    @property
    def part(self) -> Path:
        return self.part_dir / f"{self.plan.name}.part"

    @property
    def state_file(self) -> Path:
        return self.part_dir / f"{self.plan.name}.awm-state.json"

    @property
    def want(self) -> dict[str, Any]:
        p = self.plan
        return {"etag": p.remote.etag, "source_size": p.remote.size, "layout": p.layout_id, "total": p.total}

    def state(self) -> dict[str, Any] | None:
        try:
            state = load_json(self.state_file, "download state")
        except AwmError:  # absent or damaged: start the file again
            return None
        return state if isinstance(state, dict) and all(state.get(k) == v for k, v in self.want.items()) else None

    def resume_from(self, same: bool) -> int:
        """Bytes of the ``.part`` file that can be kept (-1: start again)."""
        have = self.part.stat().st_size if (same and self.part.is_file()) else -1
        return have if len(self.plan.prefix) <= have <= self.plan.total else -1


def _transfer(hub: HubSession, commit: str, f: _Part, have: int) -> str:
    """Fetch what the ``.part`` file lacks from byte ``have`` on; the sha256 of the whole file."""
    plan = f.plan
    if have < 0:
        f.part.unlink(missing_ok=True)
        atomic_write_text(f.state_file, json.dumps(dict(f.want, complete=False)))
        with f.part.open("wb") as new:
            new.write(plan.prefix)
        have = len(plan.prefix)
    elif have > len(plan.prefix):
        log.info("%s: resuming %s at byte %d of %d", hub.ref.repo_id, plan.name, have, plan.total)
    hub.done += have - len(plan.prefix)
    hasher = sha256_file(f.part, have)
    url = hub.url(commit, plan.remote.name)
    with f.part.open("r+b") as fh:
        fh.seek(have)
        fh.truncate()

        def sink(chunk: bytes) -> None:
            try:
                _write(fh, chunk)
            except OSError as exc:
                raise _DiskError(exc, f.part) from None
            hasher.update(chunk)

        out_pos = len(plan.prefix)
        for start, length in plan.segments:
            if have < out_pos + length:
                skip = max(0, have - out_pos)
                hub.get_range(url, plan.remote, start + skip, start + length, sink)
            out_pos += length
        fh.flush()
        os.fsync(fh.fileno())
    return str(hasher.hexdigest())


def _fill(hub: HubSession, commit: str, plan: FilePlan, part_dir: Path) -> dict[str, Any]:
    """Download ``plan`` into ``part_dir/name``, resuming a ``.part`` file whose state matches; its manifest record."""
    f = _Part(plan, part_dir)
    state = f.state()
    if state is not None and state.get("complete") and f.final.is_file() and f.final.stat().st_size == plan.total:
        return dict(state["record"])
    f.final.unlink(missing_ok=True)
    try:
        digest = _transfer(hub, commit, f, f.resume_from(state is not None))
    except _DiskError as exc:
        _discard(f.part, f.state_file)
        raise disk_error(exc.exc, exc.path) from None
    except OSError as exc:
        _discard(f.part, f.state_file)
        raise disk_error(exc, f.part) from None
    size = f.part.stat().st_size
    if size != plan.total:
        _discard(f.part, f.state_file)
        raise HubError(f"{hub.ref.repo_id}: {plan.name}: wrote {size} bytes, expected {plan.total}; discarded, run again")
    verified = _verify(hub, plan, f.part, digest, f.state_file)
    record = {
        "name": plan.name,
        "kind": plan.kind,
        "size": plan.total,
        "sha256": digest,
        "source_size": plan.remote.size,
        "source_etag": plan.remote.etag,
        "verified": verified,
    }
    if plan.kind == "tensors":
        record["n_tensors"] = len(plan.tensors)
    try:
        # State first: a kill between the two leaves a complete .part that the next run only re-checks.
        atomic_write_text(f.state_file, json.dumps(dict(f.want, complete=True, record=record)))
        os.replace(f.part, f.final)
    except OSError as exc:
        _discard(f.part, f.state_file)
        raise disk_error(exc, f.part) from None
    return record


def _verify_whole(where: str, etag: str, part: Path, digest: str, state_file: Path) -> str:
    if SHA256_RE.match(etag):
        if digest != etag:
            _discard(part, state_file)
            raise HubError(f"{where}: sha256 {digest[:12]} does not match the Hub's {etag[:12]}; the download was corrupt and was removed")
        return "size and sha256 (LFS ETag)"
    if COMMIT_RE.match(etag):
        sha1 = git_blob_sha1(part)
        if sha1 != etag:
            _discard(part, state_file)
            raise HubError(
                f"{where}: git blob sha1 {sha1[:12]} does not match the Hub's {etag[:12]}; the download was corrupt and was removed"
            )
        return "size and git blob sha1 (ETag)"
    return "size only (the Hub gave no hash)"


def _verify(hub: HubSession, plan: FilePlan, part: Path, digest: str, state_file: Path) -> str:
    """Check a finished file; say what was checked."""
    where = f"{hub.ref.repo_id}: {plan.name}"
    if plan.kind == "whole":
        return _verify_whole(where, plan.remote.etag or "", part, digest, state_file)
    from safetensors import SafetensorError, safe_open

    from awmtrace.io.safetensors_dir import bfloat16

    bfloat16()  # registers the dtype safetensors' numpy reader looks up

    try:
        with safe_open(str(part), framework="numpy") as handle:
            names = set(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        _discard(part, state_file)
        raise FormatError(f"{where}: the assembled file does not open with safetensors ({first_line(exc)}); removed") from None
    if names != set(plan.tensors):
        _discard(part, state_file)
        raise FormatError(f"{where}: the assembled file holds other tensors than planned; removed")
    return "header consistency; ranges: 206, Content-Range, length, ETag (sha256 of the whole file cannot be checked on ranges)"


@dataclass(frozen=True)
class Published:
    """A snapshot folder and its manifest; ``fetched``: whether this call downloaded it."""

    path: Path
    manifest: dict[str, Any]
    fetched: bool


def _prepare(hub: HubSession, part_dir: Path, snapshots: Path, to_write: int) -> None:
    try:
        part_dir.mkdir(parents=True, exist_ok=True)
        snapshots.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(part_dir).free
    except OSError as exc:
        raise disk_error(exc, part_dir) from None
    if free < to_write:
        raise HubError(
            f"{part_dir}: {to_write / 1e9:.2f} GB needed for {hub.ref.spec}, only {free / 1e9:.2f} GB free; "
            "free space or set AWMTRACE_CACHE to another disk"
        )


def _manifest(hub: HubSession, commit: str, ffn: bool, plan: FetchPlan, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "repo_id": hub.ref.repo_id,
        "revision": hub.ref.revision,
        "file": plan.gguf_file,
        "commit": commit,
        "commit_date": hub.commit_date,
        "endpoint": hub.endpoint,
        "ffn": ffn,
        "created_at": now(),
        "bytes_needed": plan.bytes_needed,
        "checkpoint_bytes": plan.checkpoint_bytes,
        "repo_bytes": plan.repo_bytes,
        "n_tensors": plan.n_tensors,
        "notes": plan.notes,
        "files": records,
    }


def _rename_into_place(part_dir: Path, snap: Path, plan: FetchPlan, manifest: dict[str, Any]) -> None:
    names = {p.name for p in plan.files}
    for p in plan.files:
        _Part(p, part_dir).state_file.unlink(missing_ok=True)
    for stray in part_dir.iterdir():
        if stray.name not in names:
            _discard(stray)
    atomic_write_text(part_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))
    if snap.exists():
        shutil.rmtree(snap)  # damaged (it failed the completeness check)
    os.replace(part_dir, snap)


def publish(hub: HubSession, repo_dir: Path, commit: str, variant: str, plan: FetchPlan, *, ffn: bool, verify: bool) -> Published:
    """Download every file of ``plan`` into ``partial/<variant>`` and publish it as ``snapshots/<variant>``.

    Holds a file lock per variant, so two processes never write the same
    snapshot; one that finds it complete after waiting uses it.
    """
    from huggingface_hub.utils import WeakFileLock

    part_dir = repo_dir / "partial" / variant
    snap = repo_dir / "snapshots" / variant
    _prepare(hub, part_dir, snap.parent, sum(p.total for p in plan.files))
    hub.stage = f"fetching {hub.ref.repo_id}"
    hub.planned = sum(sum(n for _, n in p.segments) for p in plan.files)
    hub.done = 0
    with WeakFileLock(repo_dir / f".lock-{variant}"):
        done = snapshot_ok(snap, verify)
        if done is not None:  # another process finished it while we waited
            return Published(snap, done, False)
        records = [_fill(hub, commit, p, part_dir) for p in plan.files]
        manifest = _manifest(hub, commit, ffn, plan, records)
        try:
            _rename_into_place(part_dir, snap, plan, manifest)
        except OSError as exc:
            raise disk_error(exc, part_dir) from None
        write_ref(repo_dir, hub.ref.revision or "main", commit)
    return Published(snap, manifest, True)
