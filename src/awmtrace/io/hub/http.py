"""HTTP to the Hub: huggingface_hub's session, headers and errors, plus checked Range reads and byte counts.

A range is used only when the answer is status 206, its ``Content-Range`` is
exactly the range asked for and names the file size the listing gave, the
body has the announced length, and the ETag of the Hub's own response equals
the listed one (the file has not changed). The sha256 of an LFS file covers
the whole file and cannot be checked on ranges.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from awmtrace._version import __version__
from awmtrace.errors import AwmError, FormatError, HubError, first_line
from awmtrace.io.base import parse_json_object, plain_relative_name
from awmtrace.io.hub.cache import iso_date
from awmtrace.io.hub.repo import COMMIT_RE, RepoRef, endpoint

__all__ = ["HubSession", "RemoteFile", "Unreachable", "Progress", "TIMEOUT_S", "MAX_RETRIES", "RETRY_WAIT_S"]

log = logging.getLogger("awmtrace.hub")

#: ``progress(stage, done, total)``, called as bytes arrive.
Progress = Callable[[str, int, int], None]

#: Seconds to wait before retry ``n`` (times ``n``) after a dropped connection.
RETRY_WAIT_S = 1.0
#: Retries of one range without receiving a byte before giving up.
MAX_RETRIES = 5
#: Seconds to wait for the server (connect, and between chunks).
TIMEOUT_S = 30.0


class Unreachable(HubError):
    """The Hub could not be reached at all (the cache may still answer)."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    etag: str | None  # LFS sha256, else the git blob id
    lfs: bool


class HubSession:
    """huggingface_hub's session, headers and errors, plus checked Range reads and byte counts."""

    def __init__(self, ref: RepoRef, token: str | bool | None, progress: Progress) -> None:
        from huggingface_hub.utils import build_hf_headers, get_session

        self.ref = ref
        self.endpoint = endpoint()
        self.token = token
        self.session = get_session()
        self.headers = build_hf_headers(token=token, library_name="awmtrace", library_version=__version__)
        self.headers["Accept-Encoding"] = "identity"
        self.progress = progress
        self.bytes_fetched = 0
        self.stage = f"fetching {ref.repo_id}"
        self.planned = 0
        self.done = 0
        #: When the revision's commit was made (UTC ISO 8601), from the last :meth:`model_info`; ``None`` if the Hub did not say.
        self.commit_date: str | None = None

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
            return Unreachable(
                f"{repo}: cannot reach {self.endpoint} for {what} ({type(exc).__name__}: {first_line(exc)}); "
                "check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached models"
            )
        return HubError(f"{repo}: {what} failed ({type(exc).__name__}: {first_line(exc)})")

    def model_info(self) -> tuple[str, dict[str, RemoteFile]]:
        """The commit the revision points at, and the repo's files; sets :attr:`commit_date`.

        The same request ``HfApi.model_info(files_metadata=True)`` makes, but the
        answer is parsed by the local JSON reader (finite numbers, bounded depth)
        and every field checked here, as any file read from disk is.
        """
        from urllib.parse import quote

        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        from huggingface_hub.utils import hf_raise_for_status

        rev = self.ref.revision
        path = f"{self.endpoint}/api/models/{self.ref.repo_id}" + (f"/revision/{quote(rev, safe='')}" if rev else "")
        try:
            r = self.session.get(path, headers=self.headers, timeout=TIMEOUT_S, params={"blobs": True})
            hf_raise_for_status(r)
            raw = r.content
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError) as exc:
            raise self.error(exc, "repo info") from None
        try:
            info = parse_json_object(raw, f"{self.ref.repo_id}: repo info from {self.endpoint}", "answer")
        except FormatError as exc:
            raise HubError(f"unreadable repo info: {exc}") from None
        commit = info.get("sha")
        if not isinstance(commit, str) or not COMMIT_RE.match(commit):
            raise HubError(f"{self.ref.repo_id}: {self.endpoint} returned no commit for revision {rev or 'main'}")
        siblings = info.get("siblings") or []
        if not isinstance(siblings, list):
            raise HubError(f"{self.ref.repo_id}: unreadable repo info from {self.endpoint} ('siblings' is not a list)")
        files = [self._remote_file(entry) for entry in siblings]
        # For a revision the Hub's lastModified is that commit's date (createdAt is the repo's creation).
        self.commit_date = iso_date(info.get("lastModified"))
        return commit, {f.name: f for f in files}

    def _remote_file(self, entry: Any) -> RemoteFile:
        """One ``siblings`` entry of the repo info, checked: a plain relative name, a size, the LFS sha256 or git blob id."""
        entry = entry if isinstance(entry, dict) else {}
        name = entry.get("rfilename")
        lfs = entry.get("lfs")
        lfs = lfs if isinstance(lfs, dict) else None
        size = entry.get("size") if entry.get("size") is not None else (lfs or {}).get("size")
        # Names become paths in the cache: a listing must not reach outside it.
        if not isinstance(name, str) or not plain_relative_name(name):
            raise HubError(f"{self.ref.repo_id}: {self.endpoint} lists a file named {name!r}, which is not a plain relative path")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HubError(f"{self.ref.repo_id}: {self.endpoint} lists {name} without a size")
        etag = (lfs or {}).get("sha256") or entry.get("blobId")
        return RemoteFile(name, size, str(etag) if etag is not None else None, lfs is not None)

    def url(self, commit: str, name: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.ref.repo_id, name, revision=commit, endpoint=self.endpoint)

    def get_range(self, url: str, f: RemoteFile, start: int, stop: int, sink: Callable[[bytes], None]) -> None:
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

    def _check_response(self, r: Any, f: RemoteFile, start: int, stop: int) -> None:
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

    def read_bytes(self, url: str, f: RemoteFile, start: int, stop: int) -> bytes:
        buf = bytearray()
        self.get_range(url, f, start, stop, buf.extend)
        return bytes(buf)


def _norm_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None
