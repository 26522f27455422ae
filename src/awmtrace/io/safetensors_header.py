"""The safetensors header: one parser and one writer, for local files and Hub byte ranges alike.

Format (https://huggingface.co/docs/safetensors/index#format): an 8-byte
little-endian header length ``n``, ``n`` bytes of JSON mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the data section, which follows the header) plus an optional
``__metadata__`` object of strings, then the data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from awmtrace.errors import FormatError
from awmtrace.io.base import SAFETENSORS_DTYPES, open_regular, os_error, parse_json

__all__ = [
    "DTYPE_BYTES",
    "MAX_HEADER_BYTES",
    "HeaderTensor",
    "SafetensorsHeader",
    "header_length",
    "parse_header",
    "read_header",
    "write_header",
]

#: Bytes per element of the safetensors dtypes (a view of the one table, ``io.base.SAFETENSORS_DTYPES``).
DTYPE_BYTES = {name: size for name, (size, _) in SAFETENSORS_DTYPES.items()}

#: The safetensors reference implementation refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class HeaderTensor:
    """One header entry; ``begin``/``end`` are data offsets, relative to the start of the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: ``tensors`` in data order, ``size`` the whole file's bytes."""

    file: str
    size: int
    header_len: int
    metadata: dict[str, str]
    tensors: dict[str, HeaderTensor]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _bad(where: str, problem: str) -> FormatError:
    return FormatError(f"{where}: bad safetensors header ({problem}); the file is damaged or the transfer was corrupted")


def header_length(first8: bytes, file_size: int, where: str) -> int:
    """The JSON header's length from a file's first 8 bytes, checked against the file size."""
    if file_size < 8 or len(first8) < 8:
        raise FormatError(f"{where}: {file_size} bytes is too small for a safetensors file")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise FormatError(f"{where}: header length {n} does not fit the file ({file_size} bytes); not a safetensors file")
    return int(n)


def _entry(name: str, entry: object, where: str) -> HeaderTensor:
    if not isinstance(entry, dict):
        raise _bad(where, f"entry {name!r} is not an object")
    try:
        dtype = str(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(v) for v in entry["data_offsets"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise _bad(where, f"entry {name!r} lacks dtype/shape/data_offsets") from None
    if min(shape, default=0) < 0 or not 0 <= begin <= end:
        raise _bad(where, f"entry {name!r} has negative sizes or offsets")
    if dtype in DTYPE_BYTES and (end - begin) != int(np.prod(shape, dtype=np.int64)) * DTYPE_BYTES[dtype]:
        raise _bad(where, f"tensor {name!r} spans {end - begin} bytes, but {dtype}{list(shape)} needs a different size")
    return HeaderTensor(name, dtype, shape, begin, end)


def parse_header(file: str, raw: bytes, header_len: int, file_size: int, where: str) -> SafetensorsHeader:
    """Parse the JSON header ``raw`` and check it against the file size: offsets contiguous, sizes equal to shape x dtype."""
    try:
        data = parse_json(raw, where, "safetensors header")
    except FormatError as exc:
        raise _bad(where, f"not JSON: {str(exc).removeprefix(f'{where}: ')}") from None
    if not isinstance(data, dict):
        raise _bad(where, "not a JSON object")
    meta = data.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _bad(where, "__metadata__ is not an object")
    tensors = sorted((_entry(name, entry, where) for name, entry in data.items()), key=lambda t: (t.begin, t.end))
    pos = 0
    for t in tensors:
        if t.begin != pos:
            raise _bad(where, f"tensor {t.name!r} starts at {t.begin}, expected {pos} (gap or overlap)")
        pos = t.end
    if 8 + header_len + pos != file_size:
        raise _bad(where, f"header and data take {8 + header_len + pos} bytes, the file has {file_size}")
    return SafetensorsHeader(file, file_size, header_len, {str(k): str(v) for k, v in meta.items()}, {t.name: t for t in tensors})


def read_header(path: str | Path) -> SafetensorsHeader:
    """The checked header of a local safetensors file (a regular file; FIFOs and devices are refused unopened)."""
    with open_regular(path, "safetensors file") as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            n = header_length(fh.read(8), size, str(path))
            raw = fh.read(n)
        except OSError as exc:
            raise os_error(path, exc) from None
    return parse_header(os.path.basename(path), raw, n, size, str(path))


def write_header(tensors: Iterable[HeaderTensor], metadata: dict[str, str]) -> bytes:
    """Length prefix and JSON header of a file holding ``tensors`` back to back, in the given order.

    Each tensor's data offsets are recomputed; the JSON is padded with spaces to
    a multiple of 8 bytes, as the reference writer does.
    """
    out: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        out[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(out, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body
