"""Safetensors checkpoints: one file, a directory of shards with an index, or shards without one.

Reads go through ``safetensors.safe_open(framework="numpy")`` (bf16 arrives as
an ``ml_dtypes`` array). A file is opened for each batch of reads and closed
after, so the pages its memory map touched leave the process's RSS instead of
piling up layer after layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401 - registers numpy's 'bfloat16' dtype, which safetensors' numpy reader looks up by name
import numpy as np
from safetensors import SafetensorError, safe_open

from awmtrace.errors import FormatError, InputNotFound, MissingTensor
from awmtrace.io.base import RowReader, TensorSource, read_json, to_float32

__all__ = ["SafetensorsSource", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"


def _open(path: Path):  # noqa: ANN202 - safe_open's handle type is private
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class SafetensorsSource(TensorSource):
    """A safetensors file or a Hugging Face directory of safetensors shards."""

    format = "safetensors"

    def __init__(self, path: Path, files: list[Path] | None = None) -> None:
        self.path = path
        self.metadata: dict[str, Any] = {}
        root = path if path.is_dir() else path.parent
        config_path = root / "config.json"
        self.config = read_json(config_path) if path.is_dir() and config_path.is_file() else {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        self._file: dict[str, Path] = {}
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
        if index.is_file():
            data = read_json(index)
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise FormatError(f"{index}: no 'weight_map' object")
            shards = sorted({str(v) for v in weight_map.values()})
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise InputNotFound(
                    f"{index} lists shard(s) that are not in {path}: {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}; download the missing files"
                )
            return [path / s for s in shards]
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
            with _open(file) as handle:
                for name in group:
                    try:
                        raw = handle.get_tensor(name)
                    except (SafetensorError, OSError, ValueError, TypeError) as exc:
                        raise FormatError(f"{file}: cannot read tensor {name!r} ({_short(exc)})") from None
                    out[name] = to_float32(raw, f"{file}: tensor {name!r}")
                    del raw
        return out

    def row_reader(self, name: str) -> RowReader:
        # One copy in the stored dtype (bf16 is half a float32 copy); rows are
        # converted to float32 only as they are taken.
        file = self._file[self._check(name)]
        with _open(file) as handle:
            try:
                stored = handle.get_tensor(name)
            except (SafetensorError, OSError, ValueError, TypeError) as exc:
                raise FormatError(f"{file}: cannot read tensor {name!r} ({_short(exc)})") from None
        return RowReader(stored, lambda block: block, f"{file}: tensor {name!r}")
