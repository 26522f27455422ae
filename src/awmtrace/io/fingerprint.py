"""Content fingerprints: which bytes a result was computed from.

A fingerprint is a sha256 over what awmtrace reads, not over file names or
modification times, so the same weights give the same fingerprint wherever
they lie (a copy, a Hub snapshot, another machine) and any change to a tensor
the method reads changes it. Results record it for audit; caches key on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.io.base import TensorSource

__all__ = ["content_fingerprint", "file_fingerprint", "hub_snapshot"]

_CHUNK = 1 << 22
_SNAPSHOT = re.compile(r"^([0-9a-f]{40})(\+\w+)?$")


def _update_from_file(h: Any, path: Path, offset: int, nbytes: int) -> None:
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        left = nbytes
        while left > 0:
            block = fh.read(min(_CHUNK, left))
            if not block:
                raise OSError(f"{path}: ended {left} bytes early while hashing")
            h.update(block)
            left -= len(block)


def _stored_bytes(source: TensorSource, name: str) -> np.ndarray | None:
    """The tensor's bytes as stored (quantised blocks included) when the reader exposes them without a copy."""
    tensors = getattr(source, "_tensors", None)
    t = tensors.get(name) if isinstance(tensors, dict) else None
    data = getattr(t, "data", None)
    if isinstance(data, np.ndarray):  # GGUF: the memory-mapped stored blocks
        return np.ascontiguousarray(data)
    return None


def content_fingerprint(source: TensorSource, names: Iterable[str]) -> str:
    """Hex sha256 over, for each name in sorted order, the name, stored dtype, shape and the tensor's stored bytes.

    Stored bytes are read straight from the file where the reader knows their
    layout (safetensors F32/F16/BF16), taken from the memory map for GGUF
    (quantised blocks as stored); other readers (pickle ``.bin``, other
    safetensors dtypes) contribute the float32 values awmtrace reads.
    """
    h = hashlib.sha256()
    for name in sorted(set(names)):
        shape = tuple(int(d) for d in source.shape(name))
        h.update(f"{name}\0{source.dtype(name)}\0{shape}\0".encode())
        layout = source.raw_layout(name)
        if layout is not None:
            _update_from_file(h, layout.path, layout.offset, layout.nbytes)
            continue
        stored = _stored_bytes(source, name)
        if stored is not None:
            h.update(stored.data)
            continue
        h.update(np.ascontiguousarray(source.read(name), dtype="<f4").tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """Hex sha256 of a whole file (results stores, results files, suites and null files)."""
    path = Path(path)
    h = hashlib.sha256()
    _update_from_file(h, path, 0, path.stat().st_size)
    return h.hexdigest()


def hub_snapshot(path: str | Path) -> dict[str, str] | None:
    """``{"repo": "org/name", "commit": sha}`` when ``path`` lies in a Hub cache snapshot, else ``None``.

    Both huggingface_hub's cache and awmtrace's lean cache use
    ``models--org--name/snapshots/<commit>[+variant]/``.
    """
    parts = Path(path).expanduser().absolute().parts
    for i in range(len(parts) - 1, 1, -1):
        m = _SNAPSHOT.match(parts[i])
        if m and parts[i - 1] == "snapshots" and parts[i - 2].startswith("models--"):
            return {"repo": parts[i - 2][len("models--") :].replace("--", "/"), "commit": m.group(1)}
    return None
