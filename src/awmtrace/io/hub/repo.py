"""Hub repo ids and the environment: what the user typed, and where the Hub and the caches are.

Accepted forms (as the Hub, ``huggingface_hub`` and llama.cpp's ``-hf`` take them)::

    org/name                      org/name@revision            name (legacy ids such as gpt2)
    org/name:model-Q8_0.gguf      org/name:Q4_K_M              (one GGUF file of a repo, by name or quant)
    hf://org/name                 https://huggingface.co/org/name[/tree/REV | /blob/REV/FILE | /resolve/REV/FILE]

``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
``AWMTRACE_CACHE`` are read when called, not at import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from awmtrace.errors import HubError

__all__ = [
    "RepoRef",
    "parse_repo_id",
    "looks_like_repo_id",
    "gguf_matches",
    "is_offline",
    "endpoint",
    "hf_hub_cache",
    "cache_root",
    "COMMIT_RE",
    "SHA256_RE",
]

_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?P<repo>(?:{_REPO_PART}/)?{_REPO_PART})(?:@(?P<rev>[\w.][\w./-]{{0,254}}))?$")
# A GGUF file name (possibly in a folder of the repo) or a quantisation tag such as Q4_K_M, IQ2_XS, BF16.
_FILE_RE = re.compile(r"^(?:[\w.+-]+/)*[\w.+-]+\.gguf$|^[A-Za-z0-9_]{1,32}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
# A name with one of these endings is a file the user meant, not a legacy repo id.
_FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".json", ".sqlite", ".model")


@dataclass(frozen=True)
class RepoRef:
    """A Hub model repo, an optional revision (branch, tag or commit) and, for GGUF repos, a file or quant tag."""

    repo_id: str
    revision: str | None = None
    file: str | None = None

    @property
    def spec(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f":{self.file}" if self.file else "")

    @property
    def folder_name(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


def _bad(text: str, why: str = "") -> HubError:
    return HubError(
        f"{text!r} is not a Hugging Face repo id{why}: expected org/name, org/name@revision, org/name:FILE.gguf, "
        "org/name:QUANT, hf://org/name or https://huggingface.co/org/name (letters, digits, '-', '_', '.'; no '--' or '..')"
    )


def _from_url(text: str) -> tuple[str, str | None, str | None]:
    """``(repo, revision, file)`` of a Hub web address: ``/org/name[/tree/REV|/blob/REV/FILE|/resolve/REV/FILE]``."""
    url = urlsplit(text)
    ours = urlsplit(endpoint()).netloc
    if url.netloc.lower() not in _HUB_HOSTS and url.netloc != ours:
        raise _bad(text, f" (the address is not on the Hub: {url.netloc})")
    parts = [unquote(p) for p in url.path.split("/") if p]
    if parts[:1] == ["models"]:
        parts = parts[1:]
    for i, word in enumerate(parts[:3]):
        if word in ("tree", "blob", "resolve") and i >= 1:
            repo, rest = "/".join(parts[:i]), parts[i + 1 :]
            if not rest:
                raise _bad(text, f" (no revision after /{word}/)")
            if word == "tree":
                return repo, "/".join(rest), None
            return repo, rest[0], "/".join(rest[1:]) or None
    return "/".join(parts), None, None


def parse_repo_id(spec: str) -> RepoRef:
    """A :class:`RepoRef` from any accepted form (see the module doc); a one-line :class:`HubError` otherwise."""
    text = str(spec).strip()
    file: str | None = None
    if text.startswith("hf://"):
        text = text[len("hf://") :].removeprefix("models/")
    if re.match(r"^https?://", text):
        repo, rev, file = _from_url(text)
        body = repo + (f"@{rev}" if rev else "")
    else:
        body, _, file_part = text.partition(":")
        file = file_part or None
    m = _REPO_RE.match(body)
    if m is None or "--" in m.group("repo") or ".." in body:
        raise _bad(str(spec).strip())
    if file is not None and (not _FILE_RE.match(file) or ".." in file):
        raise _bad(str(spec).strip(), f" (after ':' expected a .gguf file name or a quant tag such as Q4_K_M, found {file!r})")
    return RepoRef(m.group("repo"), m.group("rev"), file)


def looks_like_repo_id(spec: str) -> bool:
    """Whether ``spec`` is meant as a Hub repo (any accepted form) rather than a local path.

    An existing path always wins. A bare name (``gpt2``) counts as a legacy
    repo id unless it looks like a file name (``model.safetensors``).
    """
    text = str(spec).strip()
    if not text or Path(text).expanduser().exists():
        return False
    if text.startswith(("hf://", "http://", "https://")):
        return True
    if text.startswith(("/", ".", "~")) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    try:
        parse_repo_id(text)
    except HubError:
        return False
    return True


def gguf_matches(names: list[str], want: str) -> list[str]:
    """The GGUF files among ``names`` that ``want`` picks: a file name (with or without its folder) or a quant tag.

    A tag picks the files whose name ends with it (``model-Q4_K_M.gguf``),
    else those holding it between separators (``model-Q4_K_M-v2.gguf``), case-insensitively.
    """
    ggufs = [n for n in names if n.endswith(".gguf")]
    if want.endswith(".gguf"):
        return [n for n in ggufs if n == want or n.rsplit("/", 1)[-1] == want]
    stems = {n: n.rsplit("/", 1)[-1].removesuffix(".gguf") for n in ggufs}
    word = re.escape(want)
    for pattern in (rf"(?:^|[-._]){word}$", rf"(?:^|[-._]){word}(?:$|[-.])"):
        hits = [n for n, stem in stems.items() if re.search(pattern, stem, flags=re.IGNORECASE)]
        if hits:
            return hits
    return []


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    if "HF_HUB_OFFLINE" in os.environ:
        return _env_true("HF_HUB_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    """The Hub's base address: ``HF_ENDPOINT``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hf_home() -> Path:
    from huggingface_hub import constants

    return Path(os.path.expanduser(os.environ.get("HF_HOME") or constants.HF_HOME))


def hf_hub_cache() -> Path:
    """The Hugging Face cache (``huggingface-cli download`` puts full snapshots there)."""
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
