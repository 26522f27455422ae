"""The interface every checkpoint reader implements.

A :class:`TensorSource` is lazy: opening it reads only headers; ``read`` and
``read_rows`` return float32 copies of one tensor (or some of its rows), so a
caller can hold one layer at a time and drop it. Readers never print and never
write next to the checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import FormatError, NumericalError

__all__ = ["TensorSource", "RowReader", "RawLayout", "RawBuffer", "read_raw_into", "read_json", "to_float32"]

#: Stored element types that :func:`read_raw_into` copies byte for byte.
RAW_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


@dataclass(frozen=True)
class RawLayout:
    """Where a tensor stored as a plain little-endian array lies: ``nbytes`` at ``offset`` of ``path``.

    ``dtype`` is a key of :data:`RAW_DTYPES` (``BF16`` is read as its raw
    ``uint16`` bit patterns); ``shape`` is in numpy order.
    """

    path: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


def read_raw_into(layout: RawLayout, out: np.ndarray) -> np.ndarray:
    """Copy a tensor's bytes from its file into ``out`` (C-contiguous, ``layout.nbytes`` long).

    Plain ``readinto`` on a caller-owned buffer: no memory map whose pages
    count in RSS, and no fresh allocation per read (first touches of fresh
    pages are the dominant cost of copying a layer on small VMs).
    """
    view = memoryview(out).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack __buffer__
    if view.nbytes != layout.nbytes:
        raise ValueError(f"buffer holds {view.nbytes} bytes, the tensor {layout.nbytes}")
    try:
        with open(layout.path, "rb", buffering=0) as fh:
            fh.seek(layout.offset)
            done = 0
            while done < layout.nbytes:
                got = fh.readinto(view[done:])
                if not got:
                    raise FormatError(
                        f"{layout.path}: file ends {layout.nbytes - done} bytes short of a tensor at offset {layout.offset}; "
                        "the file is truncated, download it again"
                    )
                done += got
    except OSError as exc:
        raise FormatError(f"{layout.path}: cannot read: {exc.strerror or exc}") from None
    return out


#: ``O_DIRECT`` wants file offsets, lengths and buffer addresses aligned to
#: the device's logical block; 4096 bytes covers the common devices.
DIRECT_ALIGN = 4096


class RawBuffer:
    """Reusable page-aligned memory that one tensor at a time is read into (see :meth:`read`)."""

    def __init__(self) -> None:
        self._mem = np.empty(0, dtype=np.uint8)

    def _span(self, size: int) -> np.ndarray:
        if self._mem.size < size:
            raw = np.empty(size + DIRECT_ALIGN, dtype=np.uint8)
            start = (-raw.ctypes.data) % DIRECT_ALIGN
            self._mem = raw[start : start + size]
        return self._mem[:size]

    def read(self, layout: RawLayout, direct: bool = False) -> np.ndarray:
        """The tensor as a ``layout.shape`` array of its stored type (``BF16`` as uint16 bits) viewing this buffer.

        The array is valid until the next read. ``direct`` reads with
        ``O_DIRECT`` where the file system allows it: the disk writes into
        this buffer with no page-cache copy and almost no CPU, which is what
        a read running beside busy BLAS threads should cost. Where it is not
        allowed (``EINVAL``, e.g. tmpfs), an ordinary read is made.
        """
        dtype = RAW_DTYPES[layout.dtype]
        if direct and hasattr(os, "O_DIRECT"):
            start = layout.offset - layout.offset % DIRECT_ALIGN
            need = layout.offset + layout.nbytes - start
            span = self._span(-(-need // DIRECT_ALIGN) * DIRECT_ALIGN)
            if self._read_direct(layout, start, span, need):
                skip = layout.offset - start
                return span[skip : skip + layout.nbytes].view(dtype).reshape(layout.shape)
        span = self._span(layout.nbytes)
        read_raw_into(layout, span)
        return span.view(dtype).reshape(layout.shape)

    @staticmethod
    def _read_direct(layout: RawLayout, start: int, span: np.ndarray, need: int) -> bool:
        """Fill ``span`` from ``start`` with ``O_DIRECT``; ``False`` when the file system refuses it."""
        try:
            fd = os.open(layout.path, os.O_RDONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise FormatError(f"{layout.path}: cannot read: {exc.strerror or exc}") from None
        try:
            view = memoryview(span)  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack __buffer__
            done = 0
            while done < need:
                got = os.preadv(fd, [view[done:]], start + done)
                if got <= 0 or (got % DIRECT_ALIGN and done + got < need):
                    raise FormatError(
                        f"{layout.path}: file ends {need - done - max(got, 0)} bytes short of a tensor at offset {layout.offset}; "
                        "the file is truncated, download it again"
                    )
                done += got
        except OSError as exc:
            if exc.errno == errno.EINVAL and done == 0:
                return False
            raise FormatError(f"{layout.path}: cannot read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return True


class TensorSource(ABC):
    """Lazy access to the named tensors of one checkpoint.

    ``path`` is what the user gave (a directory or a file); ``format`` is
    ``"safetensors"``, ``"gguf"`` or ``"torch"``. ``config`` is the model's
    ``config.json`` (empty when there is none) and ``metadata`` the
    format's own key/value metadata (GGUF fields; empty elsewhere).
    """

    path: Path
    format: str
    config: dict[str, Any]
    metadata: dict[str, Any]

    @abstractmethod
    def names(self) -> list[str]:
        """All tensor names, in file order."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``name`` in numpy order (``(d_out, d_in)`` for a linear weight)."""

    @abstractmethod
    def dtype(self, name: str) -> str:
        """Storage type as the format names it (``BF16``, ``Q8_0``, ...)."""

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The whole tensor as a new float32 array."""

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int array, any order) of a 2-D tensor as float32 ``(len(rows), cols)``."""
        return self.row_reader(name).take(rows)

    def row_reader(self, name: str) -> RowReader:
        """Random access to the rows of a 2-D tensor, converting only the rows asked for.

        Readers override this to keep the tensor in its stored type (bf16,
        quantised blocks, a memory map) instead of a float32 copy.
        """
        return RowReader(self.read(name), lambda block: block, f"{self.file_of(name)}: tensor {name!r}")

    def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Several tensors at once; readers group them by file."""
        return {n: self.read(n) for n in names}

    def file_of(self, name: str) -> str:
        """The file that holds ``name`` (for messages)."""
        return str(self.path)

    def raw_layout(self, name: str) -> RawLayout | None:
        """Where ``name``'s bytes lie when it is stored as a plain F32/F16/BF16 array, else ``None``.

        Lets a caller read a layer straight into buffers it reuses
        (:func:`read_raw_into`); readers that cannot say return ``None`` and
        the caller uses :meth:`read_many`.
        """
        return None

    def prefetch(self, names: Iterable[str]) -> None:
        """Hint that ``names`` will be read next, so the OS can fetch them while the caller computes."""

    def release(self) -> None:
        """Drop memory-mapped pages touched so far (they count in RSS while mapped)."""

    def close(self) -> None:
        """Release file handles and maps."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, name: object) -> bool:
        return name in set(self.names())


class RowReader:
    """Rows of one tensor held in its stored form; ``take`` converts just the rows asked for.

    ``stored``: ``(rows, ...)`` array in the stored type; ``convert`` maps a
    block of stored rows to values (e.g. dequantisation).
    """

    def __init__(self, stored: Any, convert: Any, where: str) -> None:
        self._stored = stored
        self._convert = convert
        self._where = where
        self.n_rows = int(stored.shape[0])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), cols)`` float32 rows, NaN/Inf refused."""
        rows = np.asarray(rows, dtype=np.int64)
        return to_float32(self._convert(self._stored[rows]), self._where)

    def close(self) -> None:
        self._stored = None


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, turning every failure into a one-line :class:`FormatError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def to_float32(array: np.ndarray, where: str) -> np.ndarray:
    """Convert to a fresh float32 array and refuse NaN/Inf, naming ``where`` in the error."""
    out = np.array(array, dtype=np.float32, copy=True, order="C")
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise NumericalError(f"{where}: {bad} NaN/Inf value(s) in the weights; the checkpoint is damaged")
    return out
