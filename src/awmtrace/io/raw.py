"""Tensors stored as plain arrays (F32/F16/BF16), read straight from their byte ranges.

:class:`RawLayout` says where a tensor's bytes lie (from a validated header);
:func:`read_raw_into` and :class:`RawBuffer` copy a whole tensor into memory
the caller reuses (with ``O_DIRECT`` where allowed), and :func:`iter_raw_rows`
streams a 2-D tensor a block of rows at a time. bfloat16 stays as its
``uint16`` bits; NaN/Inf are found on the bits, without converting.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from awmtrace.errors import FormatError, NumericalError
from awmtrace.io.base import RAW_DTYPES, check_regular, open_regular, os_error

__all__ = ["RawLayout", "RawBuffer", "read_raw_into", "iter_raw_rows", "nonfinite_count", "DIRECT_ALIGN"]


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
        with open_regular(layout.path, "tensor file", buffering=0) as fh:
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
        raise os_error(layout.path, exc) from None
    return out


#: Exponent bits that are all ones in a NaN/Inf, by raw type (read as unsigned bit patterns).
_NONFINITE_BITS = {"BF16": 0x7F80, "F16": 0x7C00}


def nonfinite_count(block: np.ndarray, dtype: str) -> int:
    """How many NaN/Inf values a block read raw (see :data:`RAW_DTYPES`) holds, without converting it."""
    mask = _NONFINITE_BITS.get(dtype)
    if mask is None:
        return int(np.count_nonzero(~np.isfinite(block)))
    bits = block.view(np.uint16)
    return int(np.count_nonzero((bits & mask) == mask))


def iter_raw_rows(layout: RawLayout, rows_per_block: int, where: str) -> Iterator[np.ndarray]:
    """A 2-D tensor stored raw, ``rows_per_block`` rows at a time, as stored (``BF16`` as ``uint16`` bits).

    One buffer is reused (copy a block to keep it); a block holding NaN/Inf is refused as a damaged checkpoint.
    """
    n_rows, n_cols = layout.shape
    dtype = RAW_DTYPES[layout.dtype]
    if n_rows * n_cols * dtype.itemsize != layout.nbytes:
        raise FormatError(f"{where}: {layout.nbytes} bytes for a {n_rows}x{n_cols} {layout.dtype} tensor; the header is inconsistent")
    buf = np.empty((min(rows_per_block, n_rows), n_cols), dtype=dtype)
    try:
        with open_regular(layout.path, "tensor file", buffering=0) as fh:
            fh.seek(layout.offset)
            for start in range(0, n_rows, rows_per_block):
                block = buf[: min(rows_per_block, n_rows - start)]
                view = memoryview(block).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
                done = 0
                while done < view.nbytes:
                    got = fh.readinto(view[done:])
                    if not got:
                        raise FormatError(f"{layout.path}: file ends inside a tensor at offset {layout.offset}; the file is truncated")
                    done += got
                bad = nonfinite_count(block, layout.dtype)
                if bad:
                    raise NumericalError(f"{where}: {bad} NaN/Inf value(s) in the weights; the checkpoint is damaged")
                yield block
    except OSError as exc:
        raise os_error(layout.path, exc) from None


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
        check_regular(layout.path, "tensor file")
        try:
            fd = os.open(layout.path, os.O_RDONLY | os.O_DIRECT | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise os_error(layout.path, exc) from None
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
            raise os_error(layout.path, exc) from None
        finally:
            os.close(fd)
        return True
