"""The download planner: which files and byte ranges of a repo a comparison needs.

For safetensors, each shard's header is read with two Range GETs (length,
then JSON) and checked against the file size; the caller's selector names the
tensors needed from the headers alone (:class:`HeaderSource`), and each shard
becomes a new, smaller safetensors file written header first, followed by
those tensors' byte ranges. Pickle ``.bin`` shards cannot be cut without
unpickling and are fetched whole, as is a GGUF file named by the user.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import FormatError, InputNotFound
from awmtrace.io.base import MAX_TEXT_BYTES, TensorSource, parse_json
from awmtrace.io.card import CARD_NAME, MAX_CARD_BYTES
from awmtrace.io.hub.cache import INDEX_BIN, INDEX_SAFETENSORS
from awmtrace.io.hub.http import HubSession, RemoteFile
from awmtrace.io.hub.repo import RepoRef, gguf_matches
from awmtrace.io.safetensors_dir import shard_name
from awmtrace.io.safetensors_header import (
    DTYPE_BYTES,
    HeaderTensor,
    SafetensorsHeader,
    header_length,
    parse_header,
    write_header,
)
from awmtrace.io.vocab import TOKENIZER_FILES, TOKENIZER_SIDECARS

__all__ = ["Selector", "FilePlan", "FetchPlan", "HeaderSource", "plan_fetch"]

#: ``select(source, ffn) -> tensor names``: which tensors of a checkpoint, seen through its headers, to fetch.
Selector = Callable[[TensorSource, bool], Iterable[str]]


@dataclass
class FilePlan:
    """One output file: a prefix we write (a new safetensors header, or nothing) and source ranges."""

    name: str
    remote: RemoteFile
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


@dataclass
class FetchPlan:
    """Everything one fetch transfers, and the sizes it reports."""

    files: list[FilePlan]
    checkpoint_bytes: int
    repo_bytes: int
    planning_bytes: int
    notes: list[str] = field(default_factory=list)
    gguf_file: str | None = None

    @property
    def n_tensors(self) -> int:
        return sum(len(p.tensors) for p in self.files)

    @property
    def bytes_needed(self) -> int:
        return self.planning_bytes + sum(sum(n for _, n in p.segments) for p in self.files)


class HeaderSource(TensorSource):
    """A :class:`TensorSource` over safetensors headers alone: names, shapes and dtypes, no data.

    Lets a selector decide which tensors a remote checkpoint needs before any
    of their bytes are fetched.
    """

    format = "safetensors"

    def __init__(self, label: str, config: dict[str, Any], headers: Iterable[SafetensorsHeader]) -> None:
        self.path = Path(label)
        self.config = config
        self.metadata = {}
        self._entries: dict[str, tuple[SafetensorsHeader, HeaderTensor]] = {}
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


def lean_plan(header: SafetensorsHeader, names: Iterable[str], remote: RemoteFile, origin: str) -> FilePlan:
    """A safetensors file with just ``names`` of ``header``, in their source order."""
    chosen = sorted((header.tensors[n] for n in names), key=lambda t: t.begin)
    for t in chosen:
        if t.dtype not in DTYPE_BYTES:
            raise FormatError(f"{origin}: {header.file}: tensor {t.name!r} has dtype {t.dtype}, which awmtrace cannot read")
    meta = dict(header.metadata)
    meta["awmtrace_lean"] = f"{len(chosen)} of {len(header.tensors)} tensors of {header.file} from {origin}"
    segments: list[tuple[int, int]] = []
    for t in chosen:
        start = header.data_start + t.begin
        if segments and segments[-1][0] + segments[-1][1] == start:
            segments[-1] = (segments[-1][0], segments[-1][1] + t.nbytes)
        elif t.nbytes:
            segments.append((start, t.nbytes))
    return FilePlan(header.file, remote, write_header(chosen, meta), segments, "tensors", tuple(t.name for t in chosen))


def whole_plan(remote: RemoteFile, name: str | None = None) -> FilePlan:
    return FilePlan(name or remote.name, remote, b"", [(0, remote.size)] if remote.size else [], "whole")


def tokenizer_file(files: dict[str, RemoteFile]) -> str | None:
    """The file :func:`awmtrace.io.vocab.find_tokenizer_file` would pick, among the repo's root files."""
    root = sorted(n for n in files if "/" not in n)
    for pattern in TOKENIZER_FILES:
        hits = [n for n in root if fnmatch.fnmatchcase(n, pattern)]
        if hits:
            return hits[0]
    return None


def choose_gguf(ref: RepoRef, files: dict[str, RemoteFile]) -> str:
    """The GGUF file ``ref.file`` names (a file name, or a quant tag such as ``Q4_K_M``, as llama.cpp's ``-hf`` takes it)."""
    ggufs = sorted(n for n in files if n.endswith(".gguf"))
    if not ggufs:
        raise InputNotFound(f"{ref.spec}: the repo holds no .gguf files to pick {ref.file!r} from")
    hits = gguf_matches(ggufs, str(ref.file))
    if len(hits) != 1:
        found = "no file matches" if not hits else f"{len(hits)} files match ({', '.join(hits[:4])})"
        raise InputNotFound(f"{ref.spec}: {found}; the repo holds {', '.join(ggufs[:8])}{' ...' if len(ggufs) > 8 else ''}")
    if "-of-" in hits[0].rsplit("/", 1)[-1]:
        raise InputNotFound(f"{ref.spec}: {hits[0]} is one part of a split GGUF; merge the parts with llama-gguf-split and pass the file")
    return hits[0]


def _gguf_hint(ref: RepoRef, ggufs: list[str]) -> InputNotFound:
    example = ggufs[0].rsplit("/", 1)[-1]
    return InputNotFound(
        f"{ref.spec}: the repo holds only GGUF files ({len(ggufs)}, e.g. {example}); name one as "
        f"{ref.repo_id}:{example} or by its quant tag ({ref.repo_id}:Q8_0)"
    )


def choose_weights(ref: RepoRef, files: dict[str, RemoteFile]) -> tuple[str, list[str], str | None]:
    """``(format, weight files, index file)`` at the repo root, preferring safetensors; a named GGUF file wins."""
    if ref.file is not None:
        return "gguf", [choose_gguf(ref, files)], None
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
    ggufs = sorted(n for n in files if n.endswith(".gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs, None
    if ggufs:
        raise _gguf_hint(ref, ggufs)
    raise InputNotFound(f"{ref.spec}: no safetensors or pytorch .bin weights at the repo root ({len(files)} files listed)")


def _json_file(hub: HubSession, commit: str, remote: RemoteFile) -> Any:
    """A small JSON file of the repo, parsed with the local reader's checks (size, depth, finite numbers)."""
    if remote.size > MAX_TEXT_BYTES:
        where = f"{hub.ref.repo_id}@{commit[:12]}: {remote.name}"
        raise FormatError(f"{where}: {remote.size} bytes, more than any real JSON file of a model needs; refused unread")
    raw = hub.read_bytes(hub.url(commit, remote.name), remote, 0, remote.size) if remote.size else b""
    return parse_json(raw, f"{hub.ref.repo_id}@{commit[:12]}: {remote.name}", "JSON file")


def index_shards(hub: HubSession, commit: str, remote: RemoteFile, files: dict[str, RemoteFile]) -> list[str]:
    """The shard files an index's ``weight_map`` names; each must be a file of the repo."""
    data = _json_file(hub, commit, remote)
    where = f"{hub.ref.repo_id}: {remote.name}"
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{where}: not a valid index (no 'weight_map' object)")
    # The names become paths in the cache: the local reader's rule, applied before anything is fetched or written.
    shards = sorted({shard_name(v, where) for v in weight_map.values()})
    missing = [s for s in shards if s not in files]
    if not shards or missing:
        raise FormatError(f"{where}: lists shard(s) the repo does not hold: {', '.join(missing[:3]) or 'none listed'}")
    return shards


def read_remote_header(hub: HubSession, commit: str, remote: RemoteFile) -> SafetensorsHeader:
    where = f"{hub.ref.repo_id}@{commit[:12]}: {remote.name}"
    url = hub.url(commit, remote.name)
    first8 = hub.read_bytes(url, remote, 0, 8) if remote.size >= 8 else b""
    n = header_length(first8, remote.size, where)
    return parse_header(remote.name, hub.read_bytes(url, remote, 8, 8 + n), n, remote.size, where)


def _config(hub: HubSession, commit: str, files: dict[str, RemoteFile]) -> dict[str, Any]:
    remote = files.get("config.json")
    if remote is None:
        return {}
    data = _json_file(hub, commit, remote) if remote.size else {}
    if not isinstance(data, dict):
        raise FormatError(f"{hub.ref.repo_id}@{commit[:12]}: config.json is not a JSON object")
    return data


def _safetensors_plans(
    hub: HubSession, commit: str, files: dict[str, RemoteFile], weight_files: list[str], select: Selector | None, ffn: bool
) -> list[FilePlan]:
    label = f"{hub.ref.repo_id}@{commit[:12]}"
    config = _config(hub, commit, files)
    headers = [read_remote_header(hub, commit, files[n]) for n in weight_files]
    source = HeaderSource(label, config, headers)
    names = source.names() if select is None else list(dict.fromkeys(select(source, ffn)))
    per_file: dict[str, list[str]] = {}
    for name in names:
        per_file.setdefault(source.file_of(name), []).append(name)
    by_name = {h.file: h for h in headers}
    return [lean_plan(by_name[n], per_file[n], files[n], label) for n in weight_files if n in per_file]


def card_plans(files: dict[str, RemoteFile]) -> list[FilePlan]:
    """The model card (its ``base_model`` is lineage evidence for ``awm matrix``), when the repo has a card of a card's size."""
    card = files.get(CARD_NAME)
    return [whole_plan(card)] if card is not None and card.size <= MAX_CARD_BYTES else []


def plan_fetch(hub: HubSession, commit: str, files: dict[str, RemoteFile], select: Selector | None, ffn: bool) -> FetchPlan:
    """What to transfer from ``files`` (the repo listing at ``commit``).

    ``select`` names the safetensors tensors to keep (``None``: all of them).
    """
    fmt, weight_files, index = choose_weights(hub.ref, files)
    repo_bytes = sum(f.size for f in files.values())
    if fmt == "gguf":
        name = weight_files[0]
        plans = [whole_plan(files[name], name.rsplit("/", 1)[-1]), *card_plans(files)]
        plan = FetchPlan(plans, files[name].size, repo_bytes, 0, gguf_file=name)
        plan.notes.append(f"GGUF file {name} fetched whole (its vocabulary and metadata are inside)")
        return plan
    # The sidecars say which ids are special or added; a few kB, so fetched whenever present.
    small = [n for n in ("config.json", tokenizer_file(files), *TOKENIZER_SIDECARS) if n is not None and n in files]
    plans = [whole_plan(files[n]) for n in small] + card_plans(files)
    hub.stage = f"reading headers of {hub.ref.repo_id}"
    if index is not None:
        weight_files = index_shards(hub, commit, files[index], files)
    checkpoint_bytes = sum(files[n].size for n in [*small, *weight_files] + ([index] if index else []))
    notes: list[str] = []
    if fmt == "safetensors":
        plans.extend(_safetensors_plans(hub, commit, files, weight_files, select, ffn))
    else:
        if index is not None:
            plans.append(whole_plan(files[index]))
        plans.extend(whole_plan(files[n]) for n in weight_files)
        notes.append("pickle .bin checkpoints cannot be read by ranges; shards fetched whole")
    return FetchPlan(plans, checkpoint_bytes, repo_bytes, hub.bytes_fetched, notes)
