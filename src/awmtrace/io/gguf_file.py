"""GGUF files via ``gguf.GGUFReader`` (memory-mapped) and ``gguf.quants.dequantize``.

GGUF stores shapes fastest-dimension first; the reader's ``data`` arrays
already have numpy order, so a linear weight is ``(d_out, d_in)`` as in
Hugging Face checkpoints. Every quantisation type ``dequantize`` supports is
readable; rows of a quantised matrix are whole blocks, so embedding rows can
be dequantised alone.

llama.cpp's converter reorders the rows of Q and K for its rope kernel; UCKA
is invariant to row permutations of ``W`` so nothing needs undoing here.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from awmtrace.errors import FormatError, MissingTensor
from awmtrace.io.base import RowReader, TensorSource, to_float32

__all__ = ["GGUFSource"]

# Arrays longer than this (token lists, merges, scores) stay out of ``metadata``;
# ask for them with :meth:`GGUFSource.field`.
_SMALL_ARRAY = 256


class GGUFSource(TensorSource):
    """One ``.gguf`` file."""

    format = "gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, Any] = {}
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

    def _dequantize(self, name: str, data: np.ndarray) -> np.ndarray:
        t = self._get(name)
        try:
            values = dequantize(data, t.tensor_type)
        except Exception as exc:  # noqa: BLE001 - NotImplementedError for unsupported types, and others
            raise FormatError(f"{self.path}: cannot dequantize tensor {name!r} of type {t.tensor_type.name} ({exc})") from None
        return to_float32(values, f"{self.path}: tensor {name!r}")

    def read(self, name: str) -> np.ndarray:
        out = self._dequantize(name, self._get(name).data)
        shape = self.shape(name)
        return out.reshape(shape)

    def row_reader(self, name: str) -> RowReader:
        t = self._get(name)
        if t.data.ndim != 2:
            return super().row_reader(name)
        # Quantised rows are whole blocks: pick rows of the memory map, dequantise those.
        return RowReader(t.data, lambda block: dequantize(block, t.tensor_type), f"{self.path}: tensor {name!r}")

    def release(self) -> None:
        mm = getattr(self._reader.data, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.release()
