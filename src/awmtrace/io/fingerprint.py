"""A model's content fingerprint: a hash of the bytes awmtrace reads, wherever the files lie.

Two copies of the same checkpoint (renamed, moved, fetched twice) get the
same fingerprint; a checkpoint whose read tensors changed by one byte gets
another. Only the named tensors are hashed, in their stored form (quantised
blocks stay quantised), so hashing costs one sequential read of what the
method uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from awmtrace.io.base import TensorSource

__all__ = ["content_fingerprint"]

#: Bytes hashed per read when a tensor is hashed straight from its file.
_CHUNK = 8 << 20


def _stored_bytes(source: TensorSource, name: str, h: hashlib._Hash) -> None:
    layout = source.raw_layout(name)
    if layout is not None:
        with open(layout.path, "rb", buffering=0) as fh:
            fh.seek(layout.offset)
            left = layout.nbytes
            while left:
                block = fh.read(min(_CHUNK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        return
    getter = getattr(source, "_get", None)  # GGUF: the stored (possibly quantised) blocks, not dequantised values
    if source.format == "gguf" and getter is not None:
        h.update(np.ascontiguousarray(getter(name).data).tobytes())
        return
    h.update(np.ascontiguousarray(source.read(name)).tobytes())


def content_fingerprint(source: TensorSource, names: Iterable[str]) -> str:
    """Hex sha256 over, for each name in sorted order, the name, stored dtype, shape and the tensor's stored bytes."""
    h = hashlib.sha256()
    for name in sorted(set(names)):
        h.update(f"{name}\0{source.dtype(name)}\0{','.join(map(str, source.shape(name)))}\n".encode())
        _stored_bytes(source, name, h)
    return h.hexdigest()
