"""Safetensors checkpoints: one file, a directory of shards with an index, or shards without one.

Plain F32/F16/BF16 tensors are read straight from their byte ranges (bf16 as
its bits, widened exactly); anything else goes through
``safetensors.safe_open(framework="numpy")`` (bf16 then arrives as an
``ml_dtypes`` array). A file is opened for each batch of reads and closed
after, so the pages its memory map touched leave the process's RSS instead of
piling up layer after layer.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from awmtrace.core.packed import widen_bf16
from awmtrace.errors import FormatError, InputNotFound, MissingTensor, first_line
from awmtrace.io.base import (
    RAW_DTYPES,
    RowReader,
    TensorSource,
    check_weight_dtype,
    is_regular_file,
    open_regular,
    os_error,
    plain_relative_name,
    read_json,
    to_float32,
)
from awmtrace.io.raw import RawLayout, read_raw_into
from awmtrace.io.safetensors_header import read_header

__all__ = ["SafetensorsSource", "INDEX_NAME", "shard_path", "shard_name"]

INDEX_NAME = "model.safetensors.index.json"


def bfloat16() -> Any:
    """``ml_dtypes.bfloat16``, imported on first use: the import takes about a second, which every command would pay.

    Importing it also registers numpy's ``'bfloat16'`` dtype, which safetensors' numpy reader looks up by name.
    """
    import ml_dtypes

    return ml_dtypes.bfloat16


def _bf16_rows(bits: np.ndarray) -> np.ndarray:
    """Stored bfloat16 rows (their uint16 bits) as fresh float32 values, exactly (no ``ml_dtypes`` needed)."""
    return widen_bf16(bits, np.empty(bits.shape, dtype=np.float32))


def _open(path: Path, data: bool = False):  # returns safe_open's handle, whose type is private
    """``safe_open`` of ``path``; ``data``: tensors will be read through it (bf16 ones need ``ml_dtypes``; names and shapes do not)."""
    # Open it ourselves first: refuses FIFOs without blocking and says "permission denied" with the path.
    open_regular(path, "safetensors file").close()
    if data:
        bfloat16()  # before safetensors reads a bf16 tensor
    try:
        return safe_open(str(path), framework="numpy")
    except OSError as exc:
        raise os_error(path, exc) from None
    except (SafetensorError, ValueError) as exc:
        if "permission denied" in str(exc).lower():
            raise os_error(path, PermissionError(str(exc))) from None
        raise FormatError(f"{path}: not a readable safetensors file ({_short(exc)})") from None


def shard_name(name: object, index: Path | str) -> str:
    """``name`` (a shard named in ``index``), refused unless it is a plain relative name inside the index's folder.

    An index may only name files of its own directory: a plain relative name
    (sub-folders allowed) with no ``..``, no absolute path, no drive letter and
    no backslash. The *name* is checked, not where a symbolic link points:
    the Hugging Face cache links every snapshot file into its blob store.
    Used for local indexes and for the Hub's alike.
    """
    text = str(name)
    if not isinstance(name, str) or not plain_relative_name(text):
        raise FormatError(
            f"{index}: refused shard name {text[:120]!r}: an index may only name files inside its own directory "
            "(plain relative names, no '..', no absolute path, no drive letter or backslash); the index is damaged or hostile"
        )
    return text


def shard_path(folder: Path, name: object, index: Path | str) -> Path:
    """``folder / name`` for a shard named in an index, refusing names that leave ``folder`` (see :func:`shard_name`)."""
    return folder / shard_name(name, index)


_short = first_line  # the one-line form of an error, as every reader words it


class SafetensorsSource(TensorSource):
    """A safetensors file or a Hugging Face directory of safetensors shards."""

    format = "safetensors"

    def __init__(self, path: Path, files: list[Path] | None = None) -> None:
        self.path = path
        self.metadata: dict[str, Any] = {}
        root = path if path.is_dir() else path.parent
        config_path = root / "config.json"
        # A single weights file takes the config.json beside it, as a directory does.
        self.config = read_json(config_path, "config.json") if is_regular_file(config_path, "config.json") else {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        self._file: dict[str, Path] = {}
        self._layouts: dict[Path, dict[str, RawLayout]] = {}
        if files is None:
            files = self._discover(path)
        for file in files:
            with _open(file) as handle:
                for name in handle.keys():
                    if name in self._file:
                        # Same tensor in two shards: the index (when present) already decided.
                        continue
                    sl = handle.get_slice(name)
                    self._shape[name] = tuple(int(d) for d in sl.get_shape())
                    self._dtype[name] = str(sl.get_dtype())
                    self._file[name] = file
        if not self._file:
            raise InputNotFound(f"{path}: the safetensors file(s) hold no tensors")

    @staticmethod
    def _discover(path: Path) -> list[Path]:
        if path.is_file():
            return [path]
        index = path / INDEX_NAME
        if is_regular_file(index, "safetensors index"):
            data = read_json(index, "safetensors index")
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise FormatError(f"{index}: no 'weight_map' object")
            shards = {shard_path(path, v, index) for v in weight_map.values()}
            missing = [s.name for s in sorted(shards) if not is_regular_file(s, "safetensors shard")]
            if missing:
                raise InputNotFound(
                    f"{index} lists shard(s) that are not in {path}: {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}; download the missing files"
                )
            return sorted(shards)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise InputNotFound(f"{path}: no *.safetensors files")
        return files

    def names(self) -> list[str]:
        return list(self._file)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[self._check(name)]

    def dtype(self, name: str) -> str:
        return self._dtype[self._check(name)]

    def file_of(self, name: str) -> str:
        return str(self._file[self._check(name)])

    def _check_dtype(self, name: str) -> None:
        check_weight_dtype(self._dtype[name], f"{self._file[name]}: tensor {name!r}")

    def _check(self, name: str) -> str:
        if name not in self._file:
            raise MissingTensor(f"{self.path}: no tensor named {name!r}")
        return name

    def read(self, name: str) -> np.ndarray:
        return self.read_many([name])[name]

    def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        by_file: dict[Path, list[str]] = defaultdict(list)
        for name in names:
            by_file[self._file[self._check(name)]].append(name)
        out: dict[str, np.ndarray] = {}
        for file, group in by_file.items():
            for name in group:
                self._check_dtype(name)
            # Plain tensors straight from their byte ranges; the rest through safetensors.
            rest = []
            for name in group:
                layout = self.raw_layout(name)
                if layout is None:
                    rest.append(name)
                    continue
                stored = read_raw_into(layout, np.empty(layout.shape, dtype=RAW_DTYPES[layout.dtype]))
                out[name] = to_float32(_bf16_rows(stored) if layout.dtype == "BF16" else stored, f"{file}: tensor {name!r}")
            if not rest:
                continue
            with _open(file, data=True) as handle:
                for name in rest:
                    try:
                        raw = handle.get_tensor(name)
                    except (SafetensorError, OSError, ValueError, TypeError) as exc:
                        raise FormatError(f"{file}: cannot read tensor {name!r} ({_short(exc)})") from None
                    out[name] = to_float32(raw, f"{file}: tensor {name!r}")
                    del raw
        return out

    def _file_layouts(self, file: Path) -> dict[str, RawLayout]:
        """Byte ranges of a file's plain tensors, from its header, read by the one header parser (:func:`read_header`)."""
        layouts = self._layouts.get(file)
        if layouts is None:
            h = read_header(file)
            layouts = {
                t.name: RawLayout(file, h.data_start + t.begin, t.nbytes, t.dtype, t.shape)
                for t in h.tensors.values()
                if t.dtype in RAW_DTYPES
            }
            self._layouts[file] = layouts
        return layouts

    def raw_layout(self, name: str) -> RawLayout | None:
        layout = self._file_layouts(self._file[self._check(name)]).get(name)
        if layout is None or layout.shape != self._shape[name]:
            return None
        if layout.nbytes != RAW_DTYPES[layout.dtype].itemsize * int(np.prod(layout.shape, dtype=np.int64)):
            raise FormatError(f"{layout.path}: tensor {name!r} spans {layout.nbytes} bytes, not what its shape {layout.shape} needs")
        return layout

    def prefetch(self, names: Iterable[str]) -> None:
        # POSIX_FADV_WILLNEED starts readahead without blocking on it; Linux
        # caps one call at the device's readahead window, hence 8 MiB steps.
        if not hasattr(os, "posix_fadvise"):
            return
        step = 8 << 20
        for name in names:
            layout = self.raw_layout(name) if name in self._file else None
            if layout is None:
                continue
            try:
                fd = os.open(layout.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                return
            try:
                for start in range(0, layout.nbytes, step):
                    os.posix_fadvise(fd, layout.offset + start, min(step, layout.nbytes - start), os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def row_reader(self, name: str) -> RowReader:
        # One copy in the stored dtype (bf16 is half a float32 copy); rows are
        # converted to float32 only as they are taken.
        file = self._file[self._check(name)]
        self._check_dtype(name)
        layout = self.raw_layout(name)
        if layout is not None:
            # Read into our own array rather than through the memory map: no
            # mapped pages in RSS and no per-page faults.
            stored = read_raw_into(layout, np.empty(layout.shape, dtype=RAW_DTYPES[layout.dtype]))
            return RowReader(stored, _bf16_rows if layout.dtype == "BF16" else (lambda block: block), f"{file}: tensor {name!r}")
        with _open(file, data=True) as handle:
            try:
                stored = handle.get_tensor(name)
            except (SafetensorError, OSError, ValueError, TypeError) as exc:
                raise FormatError(f"{file}: cannot read tensor {name!r} ({_short(exc)})") from None
        return RowReader(stored, lambda block: block, f"{file}: tensor {name!r}")
