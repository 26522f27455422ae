"""``fetch``: a lean local copy of a Hub repo, from the cache when it holds one, else downloaded."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awmtrace.errors import HubError
from awmtrace.io.hub.cache import MANIFEST_NAME, atomic_write_text, find_snapshot, hf_cache_snapshot, read_ref, repo_dir, variant, write_ref
from awmtrace.io.hub.download import publish
from awmtrace.io.hub.http import HubSession, Progress, Unreachable
from awmtrace.io.hub.plan import FetchPlan, Selector, plan_fetch
from awmtrace.io.hub.repo import COMMIT_RE, RepoRef, cache_root, hf_hub_cache, is_offline, parse_repo_id

__all__ = ["FetchResult", "fetch", "ensure_local"]

log = logging.getLogger("awmtrace.hub")


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did.

    ``bytes_fetched``: bytes received from the network by this call (0 when
    the cache answered). ``bytes_needed``: bytes a fetch of this snapshot
    transfers (headers, small files, tensor ranges). ``checkpoint_bytes``: the
    config, tokenizer and weight files a full download of this checkpoint
    would take; ``repo_bytes``: every file of the repo. ``source`` is
    ``fetched``, ``awmtrace-cache``, ``hf-cache`` or ``dry-run``. ``file``:
    the GGUF file fetched, for GGUF repos.
    """

    repo_id: str
    revision: str | None
    commit: str
    path: Path | None
    source: str
    bytes_fetched: int
    bytes_needed: int
    checkpoint_bytes: int
    repo_bytes: int
    files: tuple[dict[str, Any], ...] = ()
    n_tensors: int = 0
    ffn: bool = False
    notes: tuple[str, ...] = ()
    file: str | None = None

    @property
    def fraction(self) -> float:
        """``bytes_needed / checkpoint_bytes`` (0 when the size is unknown)."""
        return self.bytes_needed / self.checkpoint_bytes if self.checkpoint_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "file": self.file,
            "commit": self.commit,
            "path": str(self.path) if self.path is not None else None,
            "source": self.source,
            "bytes_fetched": self.bytes_fetched,
            "bytes_needed": self.bytes_needed,
            "checkpoint_bytes": self.checkpoint_bytes,
            "repo_bytes": self.repo_bytes,
            "fraction": self.fraction,
            "n_tensors": self.n_tensors,
            "ffn": self.ffn,
            "files": [dict(f) for f in self.files],
            "notes": list(self.notes),
        }


def _kind(ref: RepoRef, select: Selector | None, ffn: bool) -> str:
    """Which snapshot variant this request needs (see :mod:`awmtrace.io.hub.cache`)."""
    if ref.file is not None:
        return ref.file
    if select is None:
        return "all"
    return "ffn" if ffn else ""


def _cached_result(ref: RepoRef, path: Path, data: dict[str, Any], source: str) -> FetchResult:
    def num(key: str) -> int:
        try:
            return int(data.get(key, 0))
        except (TypeError, ValueError):
            return 0

    files = data.get("files", [])
    return FetchResult(
        ref.repo_id, ref.revision, str(data.get("commit")), path, source, 0, num("bytes_needed"), num("checkpoint_bytes"),
        num("repo_bytes"), tuple(files) if isinstance(files, list) else (), num("n_tensors"), bool(data.get("ffn", False)),
        tuple(str(n) for n in data.get("notes", []) or []), data.get("file"),
    )  # fmt: skip


def _hf_cache_result(ref: RepoRef, path: Path, commit: str, repo_bytes: int = 0) -> FetchResult:
    return FetchResult(ref.repo_id, ref.revision, commit, path, "hf-cache", 0, 0, 0, repo_bytes, file=ref.file)


def _from_cache(ref: RepoRef, kind: str, verify: bool, why: str) -> FetchResult:
    root = cache_root()
    rev = ref.revision or "main"
    commit = rev if COMMIT_RE.match(rev) else read_ref(repo_dir(root, ref), rev)
    if commit is not None:
        hit = find_snapshot(root, ref, commit, kind, verify)
        if hit is not None:
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
    hf_snap = hf_cache_snapshot(ref, None)
    if hf_snap is not None:
        return _hf_cache_result(ref, hf_snap, hf_snap.name if hf_snap.is_dir() else hf_snap.parent.name)
    why = why if len(why) < 160 else why[:157] + "..."
    raise HubError(
        f"{ref.spec}: not a local path, not in the cache ({root} or {hf_hub_cache()}), and the Hub cannot be used "
        f"({why}); fetch it once online (awm fetch)"
    )


def _record_date(folder: Path, data: dict[str, Any], date: str | None) -> None:
    """Add the commit date to the manifest of a snapshot fetched before dates were recorded (best effort: a read-only cache keeps none)."""
    if date is None or data.get("commit_date") is not None:
        return
    try:
        atomic_write_text(folder / MANIFEST_NAME, json.dumps({**data, "commit_date": date}, indent=1))
    except OSError as exc:
        log.warning("%s: cannot record the commit date (%s)", folder, exc)


def _dry_run(hub: HubSession, commit: str, plan: FetchPlan, ffn: bool) -> FetchResult:
    ref = hub.ref
    files = tuple({"name": p.name, "kind": p.kind, "size": p.total} for p in plan.files)
    return FetchResult(
        ref.repo_id, ref.revision, commit, None, "dry-run", hub.bytes_fetched, plan.bytes_needed, plan.checkpoint_bytes,
        plan.repo_bytes, files, plan.n_tensors, ffn, tuple(plan.notes), plan.gguf_file,
    )  # fmt: skip


def fetch(
    spec: str,
    *,
    select: Selector | None = None,
    ffn: bool = False,
    progress: Progress | None = None,
    token: str | bool | None = None,
    verify: bool = False,
    dry_run: bool = False,
) -> FetchResult:
    """Make a lean local copy of Hub repo ``spec`` (any form :func:`parse_repo_id` takes), or find it in the cache.

    ``select(source, ffn)`` names the safetensors tensors to fetch, from a
    header-only :class:`~awmtrace.io.hub.plan.HeaderSource` (``None``: every
    tensor); ``awmtrace.pipeline.hub_tensors`` is the one a comparison needs.
    ``ffn`` is passed to it and keeps its copy apart from an attention-only one.
    ``verify`` re-hashes cached files against their recorded sha256; ``dry_run`` reads headers only.
    Raises :class:`HubError` (network, auth, offline, disk) or
    :class:`FormatError` (damaged files); never leaves a snapshot that
    looks complete but is not.
    """
    ref = parse_repo_id(spec)
    kind = _kind(ref, select, ffn)
    root = cache_root()
    rev = ref.revision or "main"
    if is_offline():
        return _from_cache(ref, kind, verify, why="HF_HUB_OFFLINE is set")
    if COMMIT_RE.match(rev) and not dry_run:
        hit = find_snapshot(root, ref, rev, kind, verify)
        if hit is not None:
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
    hub = HubSession(ref, token, progress or (lambda stage, done, total: None))
    try:
        commit, files = hub.model_info()
    except Unreachable as exc:
        try:
            return _from_cache(ref, kind, verify, why=str(exc))
        except HubError:
            raise exc from None
    if not dry_run:
        hit = find_snapshot(root, ref, commit, kind, verify)
        if hit is not None:
            write_ref(repo_dir(root, ref), rev, commit)
            _record_date(hit[0], hit[1], hub.commit_date)
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
        hf_snap = hf_cache_snapshot(ref, commit)
        if hf_snap is not None:
            return _hf_cache_result(ref, hf_snap, commit, sum(f.size for f in files.values()))
    plan = plan_fetch(hub, commit, files, select, ffn)
    if dry_run:
        return _dry_run(hub, commit, plan, ffn)
    # A GGUF file the user named is kept under its own name; a repo's only GGUF under the plain variant.
    folder = variant(commit, plan.gguf_file.rsplit("/", 1)[-1] if (plan.gguf_file and ref.file) else kind)
    done = publish(hub, repo_dir(root, ref), commit, folder, plan, ffn=ffn, verify=verify)
    if not done.fetched:
        return _cached_result(ref, done.path, done.manifest, "awmtrace-cache")
    return FetchResult(
        ref.repo_id, ref.revision, commit, done.path, "fetched", hub.bytes_fetched, plan.bytes_needed, plan.checkpoint_bytes,
        plan.repo_bytes, tuple(done.manifest["files"]), plan.n_tensors, ffn, tuple(plan.notes), plan.gguf_file,
    )  # fmt: skip


def ensure_local(spec: str, progress: Progress | None = None, *, ffn: bool = False, select: Selector | None = None) -> Path:
    """A local directory (or GGUF file) holding what the method needs from Hub repo ``spec``; fetched if not cached."""
    result = fetch(spec, select=select, ffn=ffn, progress=progress)
    if result.path is None:  # only a dry run has no path
        raise HubError(f"{spec}: the fetch produced no local copy")
    return result.path
