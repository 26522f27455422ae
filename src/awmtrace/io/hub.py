"""Lean Hugging Face Hub access: only the files and byte ranges the method reads.

A repo id ``org/name[@revision]`` becomes a local directory that the normal
readers open: ``config.json``, the tokenizer file the vocabulary reader would
pick and its small sidecars (``tokenizer_config.json``, ...), and, for safetensors checkpoints, one safetensors file per shard holding
only the tensors AWM needs (token embedding and attention Q/K or fused QKV;
the FFN input projections when asked). A 7B model needs about a sixth of its
bytes, a 70B model about a tenth (see ``benchmarks/hub_fraction.py``).

How, for safetensors (format: 8-byte little-endian header length, JSON
header, then the data; https://huggingface.co/docs/safetensors/index#format):

1. ``HfApi.model_info(files_metadata=True)`` pins the revision to a commit and
   lists the files with their sizes and LFS sha256;
2. ``config.json`` and the tokenizer files are fetched whole;
3. each shard's header is read with two Range GETs (length, then JSON) and
   checked against the file size;
4. :func:`awmtrace.arch.resolve.resolve` runs on the headers alone
   (:class:`HeaderSource`) to name the tensors needed, and only their byte
   ranges are fetched, from URLs pinned to the commit, into a new safetensors
   file written header first.

Pickle ``.bin`` checkpoints cannot be cut without unpickling, so their shards
are fetched whole. GGUF-only repos hold several quantisations; the user picks
one and passes its path.

What is verified:

* whole files (config, tokenizer, ``.bin`` shards): size, and the hash the
  Hub's ETag stands for (sha256 for LFS files, git blob sha1 for others);
* byte ranges: status 206, ``Content-Range`` exactly the range asked for and
  the file size the listing gave, body length, and the ETag of the Hub's
  response equal to the listed one (the file has not changed). The sha256 of
  an LFS file covers the whole file and cannot be checked on ranges, so a
  range whose bytes were altered in transit with all of the above intact is
  not detected here (readers still refuse NaN/Inf weights);
* every safetensors header: offsets contiguous, sizes equal to shape x dtype,
  header + data equal to the file size; the written file is reopened with
  ``safetensors`` before it is published.

Cache layout (``AWMTRACE_CACHE``, default ``$HF_HOME/awmtrace``)::

    models--org--name/refs/<revision>             commit the revision pointed at
    models--org--name/snapshots/<commit>[+ffn]/    complete, published by one rename
    models--org--name/partial/<commit>[+ffn]/      in progress: *.part files + state

A killed fetch leaves only ``partial/``; the next one resumes each file with
Range from where its ``.part`` ends, if the state file (ETag, size, layout)
still matches. A snapshot directory exists only once every file in it is
complete and checked. A full snapshot already in the Hugging Face cache
(``huggingface-cli download``) is used as it is.

``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are read when called.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import AwmError, FormatError, HubError, InputNotFound
from awmtrace.io.base import TensorSource
from awmtrace.io.vocab import TOKENIZER_FILES, TOKENIZER_SIDECARS

__all__ = [
    "RepoRef",
    "FetchResult",
    "HeaderSource",
    "parse_repo_id",
    "fetch",
    "ensure_local",
    "cache_root",
    "snapshot_identity",
    "is_offline",
]

log = logging.getLogger("awmtrace.hub")

Progress = Callable[[str, int, int], None]

#: Seconds to wait before retry ``n`` (times ``n``) after a dropped connection.
RETRY_WAIT_S = 1.0
#: Retries of one range without receiving a byte before giving up.
MAX_RETRIES = 5
#: Seconds to wait for the server (connect, and between chunks).
TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
#: The safetensors reference implementation refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000

MANIFEST_NAME = "awm-fetch.json"
MANIFEST_FORMAT = "awmtrace-hub-snapshot"
MANIFEST_VERSION = 1
INDEX_SAFETENSORS = "model.safetensors.index.json"
INDEX_BIN = "pytorch_model.bin.index.json"

_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<rev>[\w.][\w./-]{{0,254}}))?$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Bytes per element of the safetensors dtypes (sub-byte types are not sized).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class RepoRef:
    """A Hub model repo and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    @property
    def spec(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def folder_name(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


def parse_repo_id(spec: str) -> RepoRef:
    """``org/name`` or ``org/name@revision``; a one-line :class:`HubError` otherwise."""
    text = str(spec).strip()
    m = _REPO_RE.match(text)
    if m is None or "--" in m.group("repo") or ".." in text:
        raise HubError(
            f"{text!r} is not a Hugging Face repo id: expected org/name or org/name@revision "
            "(letters, digits, '-', '_', '.'; no '--' or '..')"
        )
    return RepoRef(m.group("repo"), m.group("rev"))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    if "HF_HUB_OFFLINE" in os.environ:
        return _env_true("HF_HUB_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hf_home() -> Path:
    from huggingface_hub import constants

    return Path(os.path.expanduser(os.environ.get("HF_HOME") or constants.HF_HOME))


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return _hf_home() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cache_root() -> Path:
    """Where lean snapshots live: ``AWMTRACE_CACHE``, else ``$HF_HOME/awmtrace``."""
    if os.environ.get("AWMTRACE_CACHE"):
        return Path(os.path.expanduser(os.environ["AWMTRACE_CACHE"]))
    return _hf_home() / "awmtrace"


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did.

    ``bytes_fetched``: bytes received from the network by this call (0 when
    the cache answered). ``bytes_needed``: bytes a fetch of this snapshot
    transfers (headers, small files, tensor ranges). ``checkpoint_bytes``: the
    config, tokenizer and weight files a full download of this checkpoint
    would take; ``repo_bytes``: every file of the repo. ``source`` is
    ``fetched``, ``awmtrace-cache``, ``hf-cache`` or ``dry-run``.
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

    @property
    def fraction(self) -> float:
        """``bytes_needed / checkpoint_bytes`` (0 when the size is unknown)."""
        return self.bytes_needed / self.checkpoint_bytes if self.checkpoint_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
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


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # data offsets, relative to the start of the data section
    end: int


@dataclass(frozen=True)
class _Header:
    file: str
    size: int
    header_len: int
    metadata: dict[str, str]
    tensors: dict[str, _Tensor]  # in data order

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _parse_header(file: str, raw: bytes, header_len: int, file_size: int, where: str) -> _Header:
    """Parse and check a safetensors JSON header against the file size."""

    def bad(problem: str) -> FormatError:
        return FormatError(f"{where}: bad safetensors header ({problem}); the file is damaged or the transfer was corrupted")

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    meta = data.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise bad("__metadata__ is not an object")
    tensors: list[_Tensor] = []
    for name, entry in data.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"entry {name!r} lacks dtype/shape/data_offsets") from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise bad(f"entry {name!r} has negative sizes or offsets")
        if dtype in _DTYPE_BYTES and (end - begin) != int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]:
            raise bad(f"tensor {name!r} spans {end - begin} bytes, but {dtype}{list(shape)} needs a different size")
        tensors.append(_Tensor(name, dtype, shape, begin, end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in tensors:
        if t.begin != pos:
            raise bad(f"tensor {t.name!r} starts at {t.begin}, expected {pos} (gap or overlap)")
        pos = t.end
    if 8 + header_len + pos != file_size:
        raise bad(f"header and data take {8 + header_len + pos} bytes, the file has {file_size}")
    return _Header(file, file_size, header_len, {str(k): str(v) for k, v in meta.items()}, {t.name: t for t in tensors})


class HeaderSource(TensorSource):
    """A :class:`TensorSource` over safetensors headers alone: names, shapes and dtypes, no data.

    Lets :func:`awmtrace.arch.resolve.resolve` decide which tensors a remote
    checkpoint needs before any of their bytes are fetched.
    """

    format = "safetensors"

    def __init__(self, label: str, config: dict[str, Any], headers: Iterable[_Header]) -> None:
        self.path = Path(label)
        self.config = config
        self.metadata = {}
        self._entries: dict[str, tuple[_Header, _Tensor]] = {}
        for header in headers:
            for name, t in header.tensors.items():
                self._entries.setdefault(name, (header, t))

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1].shape

    def dtype(self, name: str) -> str:
        return self._entries[name][1].dtype

    def file_of(self, name: str) -> str:
        return self._entries[name][0].file

    def read(self, name: str) -> np.ndarray:
        raise FormatError(f"{self.path}: tensor {name!r} has not been fetched (header-only view of a Hub repo)")


def _norm_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_file(path: Path, limit: int | None = None) -> Any:
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


class _Unreachable(HubError):
    """The Hub could not be reached at all (the cache may still answer)."""


def _write(fh: Any, chunk: bytes) -> None:
    """Append a received chunk to a ``.part`` file (one place, so tests can make the disk fill up)."""
    fh.write(chunk)


class _DiskError(Exception):
    """A local write failed (disk full, permissions); carries the OSError."""

    def __init__(self, exc: OSError, path: Path) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.path = path


@dataclass(frozen=True)
class _RemoteFile:
    name: str
    size: int
    etag: str | None  # LFS sha256, else the git blob id
    lfs: bool


class _Hub:
    """huggingface_hub's session, headers and errors, plus checked Range reads and byte counts."""

    def __init__(self, ref: RepoRef, token: str | bool | None, progress: Progress) -> None:
        from huggingface_hub.utils import build_hf_headers, get_session

        from awmtrace import __version__

        self.ref = ref
        self.endpoint = _endpoint()
        self.token = token
        self.session = get_session()
        self.headers = build_hf_headers(token=token, library_name="awmtrace", library_version=__version__)
        self.headers["Accept-Encoding"] = "identity"
        self.progress = progress
        self.bytes_fetched = 0
        self.stage = f"fetching {ref.repo_id}"
        self.planned = 0
        self.done = 0

    def error(self, exc: BaseException, what: str) -> AwmError:
        """One line for a failed Hub call; ``what`` names the file or request."""
        import httpx2
        from huggingface_hub.errors import (
            DisabledRepoError,
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo = self.ref.repo_id
        status = getattr(getattr(exc, "response", None), "status_code", None)
        code = f"HTTP {status}" if status else type(exc).__name__
        if isinstance(exc, GatedRepoError):
            return HubError(
                f"{repo}: gated repository ({code}); accept its terms at {self.endpoint}/{repo} and set HF_TOKEN to a token of that account"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return HubError(
                f"{repo}: repository not found on {self.endpoint} ({code}) and not a local path either; check the id, "
                "or set HF_TOKEN if it is private"
            )
        if isinstance(exc, RevisionNotFoundError):
            return HubError(f"{repo}: revision {self.ref.revision!r} not found ({code}); check the branch, tag or commit")
        if isinstance(exc, RemoteEntryNotFoundError):
            return HubError(f"{repo}: {what} not found in the repo ({code})")
        if isinstance(exc, DisabledRepoError):
            return HubError(f"{repo}: access to this repository is disabled on the Hub ({code})")
        if isinstance(exc, OfflineModeIsEnabled):
            return HubError(f"{repo}: not in the cache and HF_HUB_OFFLINE is set; unset it to download")
        if isinstance(exc, HfHubHTTPError):
            if status in (401, 403):
                return HubError(f"{repo}: access denied to {what} ({code}); set HF_TOKEN to a token with read access")
            return HubError(f"{repo}: the Hub answered {code} for {what}; try again later")
        if isinstance(exc, httpx2.TransportError):
            return _Unreachable(
                f"{repo}: cannot reach {self.endpoint} for {what} ({type(exc).__name__}: {_first_line(exc)}); "
                "check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached models"
            )
        return HubError(f"{repo}: {what} failed ({type(exc).__name__}: {_first_line(exc)})")

    def model_info(self) -> tuple[str, dict[str, _RemoteFile]]:
        """The commit the revision points at, and the repo's files."""
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        from awmtrace import __version__

        api = HfApi(endpoint=self.endpoint, token=self.token, library_name="awmtrace", library_version=__version__)
        try:
            info = api.model_info(self.ref.repo_id, revision=self.ref.revision, files_metadata=True, timeout=TIMEOUT_S)
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError) as exc:
            raise self.error(exc, "repo info") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise HubError(f"{self.ref.repo_id}: unreadable repo info from {self.endpoint} ({_first_line(exc)})") from None
        commit = str(info.sha or "")
        if not _COMMIT_RE.match(commit):
            raise HubError(f"{self.ref.repo_id}: {self.endpoint} returned no commit for revision {self.ref.revision or 'main'}")
        files: dict[str, _RemoteFile] = {}
        for s in info.siblings or []:
            lfs = s.lfs
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            size = getattr(lfs, "size", None) if lfs is not None else None
            size = s.size if s.size is not None else size
            if size is None:
                raise HubError(f"{self.ref.repo_id}: {self.endpoint} lists {s.rfilename} without a size")
            files[s.rfilename] = _RemoteFile(s.rfilename, int(size), sha or s.blob_id, lfs is not None)
        return commit, files

    def url(self, commit: str, name: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.ref.repo_id, name, revision=commit, endpoint=self.endpoint)

    def get_range(self, url: str, f: _RemoteFile, start: int, stop: int, sink: Callable[[bytes], None]) -> None:
        """Bytes ``[start, stop)`` of ``f`` into ``sink``, resuming after dropped connections."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        from huggingface_hub.utils import hf_raise_for_status

        pos = start
        failures = 0
        while pos < stop:
            try:
                headers = dict(self.headers, Range=f"bytes={pos}-{stop - 1}")
                with self.session.stream("GET", url, headers=headers, timeout=TIMEOUT_S) as r:
                    if r.status_code >= 400:
                        r.read()
                        hf_raise_for_status(r)
                    self._check_response(r, f, pos, stop)
                    for chunk in r.iter_bytes():
                        if not chunk:
                            continue
                        if len(chunk) > stop - pos:
                            raise HubError(
                                f"{self.ref.repo_id}: {f.name}: the server sent more bytes than the range asked for; "
                                "the transfer is corrupt and was not used"
                            )
                        sink(chunk)
                        pos += len(chunk)
                        failures = 0
                        self.bytes_fetched += len(chunk)
                        self.done += len(chunk)
                        self.progress(self.stage, self.done, max(self.planned, self.done))
                if pos < stop:
                    raise httpx2.RemoteProtocolError("connection closed before the range was complete")
            except httpx2.TransportError as exc:
                failures += 1
                if failures > MAX_RETRIES:
                    raise HubError(
                        f"{self.ref.repo_id}: {f.name}: transfer failed {failures} times at byte {pos} "
                        f"({type(exc).__name__}); run the same command again to resume"
                    ) from None
                log.warning("%s: %s: %s at byte %d; retrying (%d/%d)", self.ref.repo_id, f.name, exc, pos, failures, MAX_RETRIES)
                time.sleep(RETRY_WAIT_S * failures)
            except (HfHubHTTPError, OfflineModeIsEnabled) as exc:
                raise self.error(exc, f.name) from None

    def _check_response(self, r: Any, f: _RemoteFile, start: int, stop: int) -> None:
        where = f"{self.ref.repo_id}: {f.name}"
        if r.status_code != 206:
            raise HubError(
                f"{where}: asked for bytes {start}-{stop - 1}, the server answered {r.status_code} instead of 206 "
                "(it ignored the Range header); nothing was used"
            )
        m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", r.headers.get("Content-Range", "").strip())
        if m is None or int(m.group(1)) != start or int(m.group(2)) != stop - 1:
            raise HubError(
                f"{where}: asked for bytes {start}-{stop - 1}, the server sent "
                f"{r.headers.get('Content-Range') or 'no Content-Range'}; the transfer is corrupt and was not used"
            )
        if m.group(3) != "*" and int(m.group(3)) != f.size:
            raise HubError(
                f"{where}: the server says the file has {m.group(3)} bytes, the repo listing says {f.size}; "
                "the file changed or the transfer is corrupt"
            )
        length = r.headers.get("Content-Length")
        if length is not None and int(length) != stop - start:
            raise HubError(f"{where}: Content-Length {length} for a range of {stop - start} bytes; not used")
        # The Hub's own response (the first hop when it redirects to a CDN) names the file version.
        first = r.history[0] if r.history else r
        seen = _norm_etag(first.headers.get("X-Linked-Etag") or first.headers.get("ETag"))
        if f.etag and seen and seen != f.etag:
            raise HubError(
                f"{where}: the server sent version {seen[:12]} of the file, the listing names {f.etag[:12]}; "
                "the file changed during the fetch; run again"
            )

    def read_bytes(self, url: str, f: _RemoteFile, start: int, stop: int) -> bytes:
        buf = bytearray()
        self.get_range(url, f, start, stop, buf.extend)
        return bytes(buf)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class _FilePlan:
    """One output file: a prefix we write (a new safetensors header, or nothing) and source ranges."""

    name: str
    remote: _RemoteFile
    prefix: bytes
    segments: list[tuple[int, int]]  # (source start, length), in output order
    kind: str  # "tensors" (ranges of a safetensors shard) | "whole"
    tensors: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return len(self.prefix) + sum(n for _, n in self.segments)

    @property
    def layout_id(self) -> str:
        h = hashlib.sha256(self.prefix)
        h.update(json.dumps(self.segments).encode())
        return h.hexdigest()


def _lean_plan(header: _Header, names: list[str], remote: _RemoteFile, origin: str) -> _FilePlan:
    """A safetensors file with just ``names`` of ``header``, in their source order."""
    chosen = sorted((header.tensors[n] for n in names), key=lambda t: t.begin)
    for t in chosen:
        if t.dtype not in _DTYPE_BYTES:
            raise FormatError(f"{origin}: {header.file}: tensor {t.name!r} has dtype {t.dtype}, which awmtrace cannot read")
    meta = dict(header.metadata)
    meta["awmtrace_lean"] = f"{len(chosen)} of {len(header.tensors)} tensors of {header.file} from {origin}"
    out: dict[str, Any] = {"__metadata__": meta}
    segments: list[tuple[int, int]] = []
    offset = 0
    for t in chosen:
        n = t.end - t.begin
        out[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
        start = header.data_start + t.begin
        if segments and segments[-1][0] + segments[-1][1] == start:
            segments[-1] = (segments[-1][0], segments[-1][1] + n)
        elif n:
            segments.append((start, n))
    body = json.dumps(out, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)  # the reference writer pads the header to 8 bytes
    return _FilePlan(header.file, remote, struct.pack("<Q", len(body)) + body, segments, "tensors", tuple(t.name for t in chosen))


def _whole_plan(remote: _RemoteFile) -> _FilePlan:
    return _FilePlan(remote.name, remote, b"", [(0, remote.size)] if remote.size else [], "whole")


def _tokenizer_file(files: dict[str, _RemoteFile]) -> str | None:
    """The file :func:`awmtrace.io.vocab.find_tokenizer_file` would pick, among the repo's root files."""
    root = sorted(n for n in files if "/" not in n)
    for pattern in TOKENIZER_FILES:
        hits = [n for n in root if fnmatch.fnmatchcase(n, pattern)]
        if hits:
            return hits[0]
    return None


def _repo_dir(root: Path, ref: RepoRef) -> Path:
    return root / ref.folder_name


def _variant(commit: str, ffn: bool) -> str:
    return commit + ("+ffn" if ffn else "")


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def _snapshot_ok(folder: Path, verify: bool = False) -> dict[str, Any] | None:
    """The manifest of a complete snapshot, or ``None`` when files are missing, resized or (``verify``) altered."""
    data = _read_manifest(folder)
    if data is None or int(data.get("format_version", 0)) > MANIFEST_VERSION:
        return None
    for entry in data.get("files", []):
        path = folder / str(entry.get("name", ""))
        try:
            if not path.is_file() or path.stat().st_size != int(entry["size"]):
                log.warning("%s: %s is missing or resized; the snapshot will be fetched again", folder, path.name)
                return None
        except (OSError, KeyError, TypeError, ValueError):
            return None
        if verify and _sha256_file(path).hexdigest() != entry.get("sha256"):
            log.warning("%s: %s does not match its recorded sha256; the snapshot will be fetched again", folder, path.name)
            return None
    return data


def _lean_snapshot(root: Path, ref: RepoRef, commit: str, ffn: bool, verify: bool = False) -> tuple[Path, dict[str, Any]] | None:
    snaps = _repo_dir(root, ref) / "snapshots"
    for name in [_variant(commit, True)] if ffn else [_variant(commit, False), _variant(commit, True)]:
        data = _snapshot_ok(snaps / name, verify)
        if data is not None:
            return snaps / name, data
    return None


def _read_ref(repo_dir: Path, revision: str) -> str | None:
    try:
        commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT_RE.match(commit) else None


def _hf_cache_snapshot(ref: RepoRef, commit: str | None) -> Path | None:
    """A complete snapshot in the Hugging Face cache (from ``huggingface-cli download``), if any."""
    repo = _hf_hub_cache() / ref.folder_name
    if commit is None:
        rev = ref.revision or "main"
        commit = rev if _COMMIT_RE.match(rev) else _read_ref(repo, rev)
    if commit is None:
        return None
    snap = repo / "snapshots" / commit
    if not (snap / "config.json").is_file():
        return None
    for index_name in (INDEX_SAFETENSORS, INDEX_BIN):
        index = snap / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
            return snap if shards and all((snap / s).is_file() for s in shards) else None
    if any(snap.glob("*.safetensors")) or any(snap.glob("*.bin")):
        return snap
    return None


def snapshot_identity(path: Path) -> str | None:
    """``hf:org/name@commit`` for a directory this module (or huggingface_hub) cached, else ``None``.

    A stable fingerprint of Hub models: the same commit gives the same
    identity wherever and whenever it was fetched.
    """
    path = Path(path)
    data = _read_manifest(path) if path.is_dir() else None
    if data is not None:
        return f"hf:{data.get('repo_id')}@{data.get('commit')}"
    parts = path.resolve().parts if path.exists() else path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and _COMMIT_RE.match(parts[-1]):
        return f"hf:{parts[-3][len('models--') :].replace('--', '/')}@{parts[-1]}"
    return None


def _atomic_write_text(path: Path, text: str) -> None:
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _state_path(part_dir: Path, name: str) -> Path:
    return part_dir / f"{name}.awm-state.json"


def _fill(hub: _Hub, commit: str, plan: _FilePlan, part_dir: Path) -> dict[str, Any]:
    """Download ``plan`` into ``part_dir/name``, resuming a ``.part`` file whose state matches."""
    final = part_dir / plan.name
    part = part_dir / f"{plan.name}.part"
    state_file = _state_path(part_dir, plan.name)
    want = {"etag": plan.remote.etag, "source_size": plan.remote.size, "layout": plan.layout_id, "total": plan.total}
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        state = None
    same = isinstance(state, dict) and all(state.get(k) == v for k, v in want.items())
    if same and state.get("complete") and final.is_file() and final.stat().st_size == plan.total:
        return dict(state["record"])
    final.unlink(missing_ok=True)
    have = part.stat().st_size if (same and part.is_file()) else -1
    if have < len(plan.prefix) or have > plan.total:
        have = -1
    try:
        if have < 0:
            part.unlink(missing_ok=True)
            _atomic_write_text(state_file, json.dumps(dict(want, complete=False)))
            with part.open("wb") as fh:
                fh.write(plan.prefix)
            have = len(plan.prefix)
        elif have > len(plan.prefix):
            log.info("%s: resuming %s at byte %d of %d", hub.ref.repo_id, plan.name, have, plan.total)
        hub.done += have - len(plan.prefix)
        hasher = _sha256_file(part, have)
        url = hub.url(commit, plan.remote.name)
        with part.open("r+b") as fh:
            fh.seek(have)
            fh.truncate()

            def sink(chunk: bytes) -> None:
                try:
                    _write(fh, chunk)
                except OSError as exc:
                    raise _DiskError(exc, part) from None
                hasher.update(chunk)

            out_pos = len(plan.prefix)
            for start, length in plan.segments:
                if have < out_pos + length:
                    skip = max(0, have - out_pos)
                    hub.get_range(url, plan.remote, start + skip, start + length, sink)
                out_pos += length
            fh.flush()
            os.fsync(fh.fileno())
    except _DiskError as exc:
        _discard(part, state_file)
        raise _disk_error(exc.exc, exc.path) from None
    except OSError as exc:
        _discard(part, state_file)
        raise _disk_error(exc, part) from None
    size = part.stat().st_size
    if size != plan.total:
        _discard(part, state_file)
        raise HubError(f"{hub.ref.repo_id}: {plan.name}: wrote {size} bytes, expected {plan.total}; discarded, run again")
    digest = hasher.hexdigest()
    verified = _verify(hub, plan, part, digest, state_file)
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
        _atomic_write_text(state_file, json.dumps(dict(want, complete=True, record=record)))
        os.replace(part, final)
    except OSError as exc:
        _discard(part, state_file)
        raise _disk_error(exc, part) from None
    return record


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def _disk_error(exc: OSError, path: Path) -> HubError:
    if exc.errno == errno.ENOSPC:
        return HubError(
            f"{path.parent}: disk full while writing {path.name}; the partial file was removed. Free space or set AWMTRACE_CACHE"
        )
    return HubError(f"{path}: cannot write ({exc.strerror or exc}); the partial file was removed")


def _verify(hub: _Hub, plan: _FilePlan, part: Path, digest: str, state_file: Path) -> str:
    """Check a finished file; say what was checked."""
    where = f"{hub.ref.repo_id}: {plan.name}"
    if plan.kind == "whole":
        etag = plan.remote.etag or ""
        if _SHA256_RE.match(etag):
            if digest != etag:
                _discard(part, state_file)
                raise HubError(
                    f"{where}: sha256 {digest[:12]} does not match the Hub's {etag[:12]}; the download was corrupt and was removed"
                )
            return "size and sha256 (LFS ETag)"
        if _COMMIT_RE.match(etag):
            sha1 = _git_blob_sha1(part)
            if sha1 != etag:
                _discard(part, state_file)
                raise HubError(
                    f"{where}: git blob sha1 {sha1[:12]} does not match the Hub's {etag[:12]}; the download was corrupt and was removed"
                )
            return "size and git blob sha1 (ETag)"
        return "size only (the Hub gave no hash)"
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(part), framework="numpy") as handle:
            names = set(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        _discard(part, state_file)
        raise FormatError(f"{where}: the assembled file does not open with safetensors ({_first_line(exc)}); removed") from None
    if names != set(plan.tensors):
        _discard(part, state_file)
        raise FormatError(f"{where}: the assembled file holds other tensors than planned; removed")
    return "header consistency; ranges: 206, Content-Range, length, ETag (sha256 of the whole file cannot be checked on ranges)"


def _choose_weights(ref: RepoRef, files: dict[str, _RemoteFile]) -> tuple[str, list[str], str | None]:
    """``(format, weight files, index file)`` at the repo root, preferring safetensors."""
    root = [n for n in files if "/" not in n]
    if INDEX_SAFETENSORS in files:
        return "safetensors", [], INDEX_SAFETENSORS
    if "model.safetensors" in files:
        return "safetensors", ["model.safetensors"], None
    st = sorted(n for n in root if n.endswith(".safetensors"))
    if st:
        return "safetensors", st, None
    if INDEX_BIN in files:
        return "torch", [], INDEX_BIN
    bins = sorted(n for n in root if n.endswith(".bin") and n.startswith("pytorch_model"))
    if bins:
        return "torch", bins, None
    ggufs = [n for n in files if n.endswith(".gguf")]
    if ggufs:
        raise InputNotFound(
            f"{ref.spec}: the repo holds only GGUF files ({len(ggufs)}, e.g. {sorted(ggufs)[0]}); download the one you "
            "want and pass its path"
        )
    raise InputNotFound(f"{ref.spec}: no safetensors or pytorch .bin weights at the repo root ({len(files)} files listed)")


def _index_shards(hub: _Hub, commit: str, remote: _RemoteFile, files: dict[str, _RemoteFile]) -> list[str]:
    raw = hub.read_bytes(hub.url(commit, remote.name), remote, 0, remote.size) if remote.size else b""
    where = f"{hub.ref.repo_id}: {remote.name}"
    try:
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"]
        shards = sorted({str(v) for v in weight_map.values()})
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise FormatError(f"{where}: not a valid index (no 'weight_map' object)") from None
    missing = [s for s in shards if s not in files]
    if not shards or missing:
        raise FormatError(f"{where}: lists shard(s) the repo does not hold: {', '.join(missing[:3]) or 'none listed'}")
    return shards


def _read_header(hub: _Hub, commit: str, remote: _RemoteFile) -> _Header:
    where = f"{hub.ref.repo_id}@{commit[:12]}: {remote.name}"
    if remote.size < 8:
        raise FormatError(f"{where}: {remote.size} bytes is too small for a safetensors file")
    url = hub.url(commit, remote.name)
    (n,) = struct.unpack("<Q", hub.read_bytes(url, remote, 0, 8))
    if n > MAX_HEADER_BYTES or 8 + n > remote.size:
        raise FormatError(f"{where}: header length {n} does not fit the file ({remote.size} bytes); not a safetensors file")
    return _parse_header(remote.name, hub.read_bytes(url, remote, 8, 8 + n), n, remote.size, where)


def _needed_tensors(label: str, config: dict[str, Any], headers: list[_Header], ffn: bool) -> dict[str, list[str]]:
    """Tensor names per shard that :func:`resolve` picks from the headers alone."""
    from awmtrace.arch.resolve import resolve

    source = HeaderSource(label, config, headers)
    view = resolve(source)
    names = {view.embedding.name}
    for layer in view.layers:
        # The norm gains folded into Q/K (and the FFN inputs) are a few KB; without them a lean copy scores unfolded.
        names.update(r.name for r in (layer.q, layer.k, layer.attn_norm) if r is not None)
        if ffn:
            names.update(r.name for r in (*layer.up, *layer.gate, layer.ffn_norm) if r is not None)
    per_file: dict[str, list[str]] = {}
    for name in names:
        per_file.setdefault(source.file_of(name), []).append(name)
    return per_file


def fetch(
    spec: str,
    *,
    ffn: bool = False,
    progress: Progress | None = None,
    token: str | bool | None = None,
    verify: bool = False,
    dry_run: bool = False,
) -> FetchResult:
    """Make a lean local copy of Hub repo ``spec`` (``org/name[@revision]``), or find it in the cache.

    ``ffn`` also keeps the FFN input projections (for ``--weights up,gate``).
    ``verify`` re-hashes cached files against their recorded sha256.
    ``dry_run`` reads headers only and reports what a fetch would transfer.
    Raises :class:`HubError` (network, auth, offline, disk) or
    :class:`FormatError` (damaged files); never leaves a snapshot that
    looks complete but is not.
    """
    progress = progress or (lambda stage, done, total: None)
    ref = parse_repo_id(spec)
    root = cache_root()
    repo_dir = _repo_dir(root, ref)
    rev = ref.revision or "main"
    if is_offline():
        return _from_cache(ref, ffn, verify, why="HF_HUB_OFFLINE is set")
    if _COMMIT_RE.match(rev) and not dry_run:
        hit = _lean_snapshot(root, ref, rev, ffn, verify)
        if hit is not None:
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
    hub = _Hub(ref, token, progress)
    try:
        commit, files = hub.model_info()
    except _Unreachable as exc:
        try:
            return _from_cache(ref, ffn, verify, why=str(exc))
        except HubError:
            raise exc from None
    if not dry_run:
        hit = _lean_snapshot(root, ref, commit, ffn, verify)
        if hit is not None:
            _write_ref(repo_dir, rev, commit)
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
        hf_snap = _hf_cache_snapshot(ref, commit)
        if hf_snap is not None:
            return FetchResult(ref.repo_id, ref.revision, commit, hf_snap, "hf-cache", 0, 0, 0, sum(f.size for f in files.values()))

    label = f"{ref.repo_id}@{commit[:12]}"
    fmt, weight_files, index = _choose_weights(ref, files)
    # The sidecars say which ids are special or added; a few kB, so fetched whenever present.
    small = [n for n in ("config.json", _tokenizer_file(files), *TOKENIZER_SIDECARS) if n is not None and n in files]
    plans: list[_FilePlan] = [_whole_plan(files[n]) for n in small]
    hub.stage = f"reading headers of {ref.repo_id}"
    if index is not None:
        weight_files = _index_shards(hub, commit, files[index], files)
    checkpoint_bytes = sum(files[n].size for n in [*small, *weight_files] + ([index] if index else []))
    if fmt == "safetensors":
        config = _fetch_config_json(hub, commit, files)
        headers = [_read_header(hub, commit, files[n]) for n in weight_files]
        per_file = _needed_tensors(label, config, headers, ffn)
        by_name = {h.file: h for h in headers}
        for name in weight_files:
            if name in per_file:
                plans.append(_lean_plan(by_name[name], per_file[name], files[name], label))
    else:
        if index is not None:
            plans.append(_whole_plan(files[index]))
        plans.extend(_whole_plan(files[n]) for n in weight_files)
    planning_bytes = hub.bytes_fetched
    needed = planning_bytes + sum(sum(n for _, n in p.segments) for p in plans)
    n_tensors = sum(len(p.tensors) for p in plans)
    notes = [] if fmt == "safetensors" else ["pickle .bin checkpoints cannot be read by ranges; shards fetched whole"]
    if dry_run:
        return FetchResult(
            ref.repo_id, ref.revision, commit, None, "dry-run", hub.bytes_fetched, needed, checkpoint_bytes,
            sum(f.size for f in files.values()), tuple({"name": p.name, "kind": p.kind, "size": p.total} for p in plans),
            n_tensors, ffn, tuple(notes),
        )  # fmt: skip
    repo_bytes = sum(f.size for f in files.values())
    return _download(hub, repo_dir, rev, commit, plans, ffn, verify, needed, checkpoint_bytes, repo_bytes, n_tensors, notes)


def _fetch_config_json(hub: _Hub, commit: str, files: dict[str, _RemoteFile]) -> dict[str, Any]:
    remote = files.get("config.json")
    if remote is None:
        return {}
    raw = hub.read_bytes(hub.url(commit, "config.json"), remote, 0, remote.size) if remote.size else b"{}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{hub.ref.repo_id}@{commit[:12]}: config.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{hub.ref.repo_id}@{commit[:12]}: config.json is not a JSON object")
    return data


def _download(
    hub: _Hub,
    repo_dir: Path,
    rev: str,
    commit: str,
    plans: list[_FilePlan],
    ffn: bool,
    verify: bool,
    needed: int,
    checkpoint_bytes: int,
    repo_bytes: int,
    n_tensors: int,
    notes: list[str],
) -> FetchResult:
    from huggingface_hub.utils import WeakFileLock

    variant = _variant(commit, ffn)
    part_dir = repo_dir / "partial" / variant
    snap = repo_dir / "snapshots" / variant
    to_write = sum(p.total for p in plans)
    try:
        part_dir.mkdir(parents=True, exist_ok=True)
        (repo_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(part_dir).free
    except OSError as exc:
        raise _disk_error(exc, part_dir) from None
    if free < to_write:
        raise HubError(
            f"{part_dir}: {to_write / 1e9:.2f} GB needed for {hub.ref.spec}, only {free / 1e9:.2f} GB free; "
            "free space or set AWMTRACE_CACHE to another disk"
        )
    hub.stage = f"fetching {hub.ref.repo_id}"
    hub.planned = sum(sum(n for _, n in p.segments) for p in plans)
    hub.done = 0
    with WeakFileLock(repo_dir / f".lock-{variant}"):
        done = _snapshot_ok(snap, verify)
        if done is not None:  # another process finished it while we waited
            return _cached_result(hub.ref, snap, done, "awmtrace-cache")
        records = [_fill(hub, commit, p, part_dir) for p in plans]
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "repo_id": hub.ref.repo_id,
            "revision": hub.ref.revision,
            "commit": commit,
            "endpoint": hub.endpoint,
            "ffn": ffn,
            "created_at": _now(),
            "bytes_needed": needed,
            "checkpoint_bytes": checkpoint_bytes,
            "repo_bytes": repo_bytes,
            "n_tensors": n_tensors,
            "notes": notes,
            "files": records,
        }
        try:
            for p in plans:
                _state_path(part_dir, p.name).unlink(missing_ok=True)
            for stray in part_dir.iterdir():
                if stray.name not in {p.name for p in plans}:
                    _discard(stray)
            _atomic_write_text(part_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))
            if snap.exists():
                shutil.rmtree(snap)  # damaged (it failed the check above)
            os.replace(part_dir, snap)
        except OSError as exc:
            raise _disk_error(exc, part_dir) from None
        _write_ref(repo_dir, rev, commit)
    return FetchResult(
        hub.ref.repo_id, hub.ref.revision, commit, snap, "fetched", hub.bytes_fetched, needed, checkpoint_bytes,
        repo_bytes, tuple(records), n_tensors, ffn, tuple(notes),
    )  # fmt: skip


def _write_ref(repo_dir: Path, rev: str, commit: str) -> None:
    if rev == commit:
        return
    path = repo_dir / "refs" / rev
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, commit)
    except OSError as exc:
        log.warning("%s: cannot record that %s is %s (%s)", repo_dir, rev, commit, exc)


def _cached_result(ref: RepoRef, path: Path, data: dict[str, Any], source: str) -> FetchResult:
    return FetchResult(
        ref.repo_id, ref.revision, str(data.get("commit")), path, source, 0, int(data.get("bytes_needed", 0)),
        int(data.get("checkpoint_bytes", 0)), int(data.get("repo_bytes", 0)), tuple(data.get("files", [])),
        int(data.get("n_tensors", 0)), bool(data.get("ffn", False)), tuple(data.get("notes", [])),
    )  # fmt: skip


def _from_cache(ref: RepoRef, ffn: bool, verify: bool, why: str) -> FetchResult:
    root = cache_root()
    rev = ref.revision or "main"
    commit = rev if _COMMIT_RE.match(rev) else _read_ref(_repo_dir(root, ref), rev)
    if commit is not None:
        hit = _lean_snapshot(root, ref, commit, ffn, verify)
        if hit is not None:
            return _cached_result(ref, hit[0], hit[1], "awmtrace-cache")
    hf_snap = _hf_cache_snapshot(ref, None)
    if hf_snap is not None:
        return FetchResult(ref.repo_id, ref.revision, hf_snap.name, hf_snap, "hf-cache", 0, 0, 0, 0)
    raise HubError(
        f"{ref.spec}: not a local path, not in the cache ({root} or {_hf_hub_cache()}), and the Hub cannot be used "
        f"({_short_why(why)}); fetch it once online (awm fetch)"
    )


def _short_why(why: str) -> str:
    return why if len(why) < 160 else why[:157] + "..."


def ensure_local(spec: str, progress: Progress | None = None, *, ffn: bool = False) -> Path:
    """A local directory holding what the method needs from Hub repo ``spec``; fetched if not cached."""
    result = fetch(spec, ffn=ffn, progress=progress)
    assert result.path is not None
    return result.path
