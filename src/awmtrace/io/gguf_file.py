"""GGUF files via ``gguf.GGUFReader`` (memory-mapped) and ``gguf.quants.dequantize``.

GGUF stores shapes fastest-dimension first; the reader's ``data`` arrays
already have numpy order, so a linear weight is ``(d_out, d_in)`` as in
Hugging Face checkpoints. Every quantisation type ``dequantize`` supports is
readable; rows of a quantised matrix are whole blocks, so embedding rows can
be dequantised alone.

llama.cpp's converter reorders the rows of Q and K for its rope kernel; UCKA
is invariant to row permutations of ``W`` so nothing needs undoing here.

Before ``GGUFReader`` sees a file, :func:`check_gguf_layout` walks its header,
metadata and tensor table with bounds checks: the reader trusts every count
and length it finds (a 49-byte file claiming 2**40 array items makes it loop
and allocate for minutes), so counts x minimum element sizes must fit in the
bytes that are left, and the tensor data must lie inside the file.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from awmtrace.errors import FormatError, MissingTensor
from awmtrace.io.base import RowReader, TensorSource, open_regular, os_error, to_float32

__all__ = ["GGUFSource", "check_gguf_layout"]

# Arrays longer than this (token lists, merges, scores) stay out of ``metadata``;
# ask for them with :meth:`GGUFSource.field`.
_SMALL_ARRAY = 256

# GGUF metadata value types (gguf.GGUFValueType) -> bytes of one scalar.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# GGUF versions gguf.GGUFReader reads.
_VERSIONS = (2, 3)
# llama.cpp's GGML_MAX_DIMS.
_MAX_DIMS = 4
# Arrays inside arrays: the reader recurses per level; real files use none.
_MAX_NESTING = 2
# All metadata array items together. gguf.GGUFReader builds numpy views per item (measured ~0.75 KB
# and ~50 us each), so this bounds what a small file can make it allocate (~1.5 GB at the cap); the
# largest real vocabularies (tokens + scores + types + merges) hold about 1.3 million.
MAX_METADATA_ITEMS = 1 << 21


class _Walk:
    """A bounds-checked cursor over the bytes of a GGUF file (``order``: ``<`` or ``>``)."""

    def __init__(self, buf: Any, size: int, order: str, path: Path) -> None:
        self.buf, self.size, self.order, self.path = buf, size, order, path
        self.pos = 0
        self.items = 0

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: not a valid GGUF file: {what}; the file is corrupt, truncated or not GGUF")

    def need(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n > left:
            raise self.fail(f"{what} needs {n} bytes at offset {self.pos} but only {left} are left in the file")

    def unpack(self, fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return int(value)

    def string(self, what: str) -> bytes:
        n = self.unpack("Q", f"length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw

    def value(self, vtype: int, key: str, depth: int = 0) -> int | None:
        """Skip one metadata value; return it when it is a UINT32 scalar (``general.alignment``)."""
        if vtype in _SCALAR_BYTES:
            self.need(_SCALAR_BYTES[vtype], f"value of {key!r}")
            if vtype == _UINT32:
                return self.unpack("I", f"value of {key!r}")
            self.pos += _SCALAR_BYTES[vtype]
        elif vtype == _STRING:
            n = self.unpack("Q", f"length of the string {key!r}")
            self.need(n, f"string {key!r} ({n} bytes)")
            self.pos += n
        elif vtype == _ARRAY:
            self.array(key, depth)
        else:
            raise self.fail(f"metadata {key!r} has unknown value type {vtype}")
        return None

    def array(self, key: str, depth: int) -> None:
        if depth >= _MAX_NESTING:
            raise self.fail(f"metadata {key!r} nests arrays more than {_MAX_NESTING} deep")
        itype = self.unpack("I", f"item type of array {key!r}")
        count = self.unpack("Q", f"length of array {key!r}")
        least = _SCALAR_BYTES.get(itype) or {_STRING: 8, _ARRAY: 12}.get(itype)
        if least is None:
            raise self.fail(f"array {key!r} has unknown item type {itype}")
        self.need(count * least, f"array {key!r} of {count} items")
        self.items += count
        if self.items > MAX_METADATA_ITEMS:
            raise self.fail(f"metadata arrays hold more than {MAX_METADATA_ITEMS} items in all (at {key!r}); no real model has that many")
        if itype in _SCALAR_BYTES:
            self.pos += count * least
            return
        for _ in range(count):
            self.value(itype, key, depth + 1)


def _header(buf: Any, size: int, path: Path) -> tuple[_Walk, int, int]:
    """The walker placed after the fixed header, and the tensor and KV counts."""
    if size < 24 or bytes(buf[:4]) != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic and a 24-byte header)")
    (version,) = struct.unpack_from("<I", buf, 4)
    # The reader's test: a version with a zero low half was written with the other byte order.
    order = ">" if version & 0xFFFF == 0 else "<"
    walk = _Walk(buf, size, order, path)
    walk.pos = 4
    version = walk.unpack("I", "version")
    if version not in _VERSIONS:
        raise walk.fail(f"version {version} (awmtrace reads GGUF versions {', '.join(map(str, _VERSIONS))})")
    n_tensors = walk.unpack("Q", "tensor count")
    n_kv = walk.unpack("Q", "metadata count")
    # Least bytes per entry: key length + type + 1-byte value; name length + n_dims + type + offset.
    walk.need(n_kv * 13 + n_tensors * 24, f"{n_kv} metadata entries and {n_tensors} tensors")
    return walk, n_tensors, n_kv


def _tensor_entry(walk: _Walk, alignment: int) -> tuple[str, int, int]:
    """Check one tensor-table entry; ``(name, offset, bytes)`` of its data (offset from the data section)."""
    raw_name = walk.string("a tensor name")
    name = raw_name.decode("utf-8", errors="replace")
    n_dims = walk.unpack("I", f"dimension count of tensor {name!r}")
    if n_dims > _MAX_DIMS:
        raise walk.fail(f"tensor {name!r} has {n_dims} dimensions (GGUF allows at most {_MAX_DIMS})")
    dims = [walk.unpack("Q", f"dimensions of tensor {name!r}") for _ in range(n_dims)]
    raw_type = walk.unpack("I", f"type of tensor {name!r}")
    offset = walk.unpack("Q", f"data offset of tensor {name!r}")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise walk.fail(f"tensor {name!r} has unknown type number {raw_type}") from None
    n_elements = 1
    for d in dims:
        n_elements *= d
    if dims and dims[0] % block:
        raise walk.fail(f"tensor {name!r} of type {qtype.name} has rows of {dims[0]} values, not whole blocks of {block}")
    if offset % alignment:
        raise walk.fail(f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment {alignment}")
    return name, offset, n_elements // block * block_bytes


def check_gguf_layout(path: Path) -> None:
    """Refuse a GGUF file whose header, metadata or tensor table does not fit in the file.

    Reads only the header and metadata bytes (memory-mapped); each count is
    checked against the bytes left before it is walked, so a hostile file is
    refused in milliseconds whatever it claims.
    """
    with open_regular(path, "GGUF file") as fh:
        try:
            size = fh.seek(0, 2)
            if size == 0:
                raise FormatError(f"{path}: empty file, not a GGUF file")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _check_mapped(buf, size, path)
        except OSError as exc:
            raise os_error(path, exc) from None


def _check_mapped(buf: Any, size: int, path: Path) -> None:
    walk, n_tensors, n_kv = _header(buf, size, path)
    alignment = 32  # gguf.GGUF_DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = walk.string("a metadata key").decode("utf-8", errors="replace")
        vtype = walk.unpack("I", f"value type of {key!r}")
        value = walk.value(vtype, key)
        if key == "general.alignment":
            if value is None or value == 0 or value & (value - 1):
                raise walk.fail(f"general.alignment must be a UINT32 power of two, found type {vtype} value {value}")
            alignment = value
    spans = [_tensor_entry(walk, alignment) for _ in range(n_tensors)]
    data_start = walk.pos + (-walk.pos % alignment)
    for name, offset, nbytes in spans:
        end = data_start + offset + nbytes
        if end > size:
            raise FormatError(
                f"{path}: GGUF tensor {name!r} ends at byte {end} but the file has {size}; "
                "the file is truncated or its tensor table is corrupt"
            )


class GGUFSource(TensorSource):
    """One ``.gguf`` file."""

    format = "gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, Any] = {}
        check_gguf_layout(path)
        try:
            self._reader = GGUFReader(str(path), "r")
        except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, KeyError, IndexError, struct errors...
            raise FormatError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        size = path.stat().st_size
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise FormatError(f"{path}: tensor {t.name!r} ends at byte {end} but the file has {size}; the file is truncated")
        self.metadata = {}
        for key, fld in self._reader.fields.items():
            if key.startswith("GGUF.") or (len(fld.data) > _SMALL_ARRAY):
                continue
            try:
                self.metadata[key] = fld.contents()
            except Exception:  # noqa: BLE001 - an odd field must not block reading weights
                continue

    def field(self, key: str) -> Any:
        """A metadata value by key (large arrays included), or ``None``."""
        fld = self._reader.fields.get(key)
        if fld is None:
            return None
        try:
            return fld.contents()
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"{self.path}: metadata field {key!r} is unreadable ({exc})") from None

    def names(self) -> list[str]:
        return list(self._tensors)

    def _get(self, name: str):
        try:
            return self._tensors[name]
        except KeyError:
            raise MissingTensor(f"{self.path}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        # ReaderTensor.shape is GGUF's ne order (fastest first); numpy order is reversed.
        return tuple(int(d) for d in reversed(self._get(name).shape.tolist()))

    def dtype(self, name: str) -> str:
        return self._get(name).tensor_type.name

    def _convert(self, name: str) -> Any:
        """``block -> values`` for tensor ``name``'s type, or a one-line error naming tensor and type."""
        qtype = self._get(name).tensor_type
        if qtype == GGMLQuantizationType.F64:
            # gguf.quants has no F64 path; the values are plain doubles (to_float32 refuses any that overflow).
            return lambda block: np.asarray(block, dtype=np.float64)
        probe = np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
        try:
            dequantize(probe, qtype)
        except NotImplementedError:
            raise FormatError(
                f"{self.path}: tensor {name!r} is stored as {qtype.name}, a type awmtrace cannot dequantize "
                "(the gguf package does not implement it); convert the model with a float or common quant type (F16, Q8_0, Q4_K...)"
            ) from None
        except Exception:  # noqa: BLE001 - the probe only asks whether the type is implemented
            pass

        def convert(block: np.ndarray) -> np.ndarray:
            try:
                return dequantize(block, qtype)
            except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, IndexError, ... on odd data
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                raise FormatError(f"{self.path}: cannot dequantize tensor {name!r} of type {qtype.name} ({first})") from None

        return convert

    def read(self, name: str) -> np.ndarray:
        out = to_float32(self._convert(name)(self._get(name).data), f"{self.path}: tensor {name!r}")
        return out.reshape(self.shape(name))

    def row_reader(self, name: str) -> RowReader:
        t = self._get(name)
        if t.data.ndim != 2:
            return super().row_reader(name)
        # Quantised rows are whole blocks: pick rows of the memory map, dequantise those.
        return RowReader(t.data, self._convert(name), f"{self.path}: tensor {name!r}")

    def release(self) -> None:
        mm = getattr(self._reader.data, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.release()
