"""PyTorch pickle checkpoints (``pytorch_model*.bin``), through the optional torch extra.

Loaded with ``torch.load(weights_only=True)``: torch's restricted unpickler
only rebuilds tensors and plain containers, so a pickle that asks to run code
is refused with :class:`UnsafeCheckpoint` instead of being executed. Zip-format
files are memory-mapped (``mmap=True``); legacy tar-format files cannot be and
are loaded whole.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import (
    FormatError,
    InputNotFound,
    MissingTensor,
    OptionalDependencyMissing,
    UnsafeCheckpoint,
    first_line,
)
from awmtrace.io.base import (
    RowReader,
    TensorSource,
    check_weight_dtype,
    is_regular_file,
    open_regular,
    os_error,
    read_json,
    to_float32,
)
from awmtrace.io.safetensors_dir import shard_path

__all__ = ["TorchBinSource", "BIN_INDEX_NAME", "import_torch"]

BIN_INDEX_NAME = "pytorch_model.bin.index.json"


def import_torch(purpose: str):  # returns the torch module
    """Import torch or explain how to get it."""
    try:
        import torch
    except ImportError:
        raise OptionalDependencyMissing(
            f"{purpose} needs PyTorch, which is not installed: pip install 'awmtrace[torch]' "
            "(on CPU-only machines: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


def _check_container(file: Path) -> None:
    """Refuse a file that is neither of the containers ``torch.save`` writes, before torch reads it.

    ``torch.save`` writes a zip archive (since PyTorch 1.6), a protocol 2+
    pickle (older releases) or, in the oldest, a tar archive. Anything else
    would reach the unpickler and read as a pickle "asking to run code".
    """
    with open_regular(file, "PyTorch checkpoint") as fh:
        try:
            head = fh.read(512)
        except OSError as exc:
            raise os_error(file, exc) from None
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode, protocol 2..5
    if head[:4] == b"PK\x03\x04" or is_pickle or head[257:262] == b"ustar":
        return
    shown = head[:8].hex(" ") if head else "nothing: the file is empty"
    raise FormatError(
        f"{file}: not a PyTorch checkpoint: neither a zip archive nor a pickle, as torch.save writes (it starts with {shown}); "
        "a custom binary format awmtrace does not read. Convert it to safetensors with the tool that wrote it"
    )


class TorchBinSource(TensorSource):
    """A directory with ``pytorch_model.bin`` or sharded ``pytorch_model-*.bin`` (+ index), or one ``.bin`` file."""

    format = "torch"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata: dict[str, Any] = {}
        root = path if path.is_dir() else path.parent
        config_path = root / "config.json"
        # A single weights file takes the config.json beside it, as a directory does.
        self.config = read_json(config_path, "config.json") if is_regular_file(config_path, "config.json") else {}
        self._torch = import_torch(f"reading {path}")
        self._loaded: dict[Path, dict[str, Any]] = {}
        self._file: dict[str, Path] = {}
        files: list[Path]
        if path.is_file():
            files = [path]
        else:
            index = path / BIN_INDEX_NAME
            if is_regular_file(index, "PyTorch index"):
                weight_map = read_json(index, "PyTorch index").get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise FormatError(f"{index}: no 'weight_map' object")
                for name, shard in weight_map.items():
                    self._file[str(name)] = shard_path(path, shard, index)
                missing = sorted({str(p) for p in self._file.values() if not is_regular_file(p, "PyTorch shard")})
                if missing:
                    raise InputNotFound(f"{index} lists shard(s) missing from {path}: {', '.join(missing[:3])}")
                files = []
            else:
                files = sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.bin"))
                if not files:
                    raise InputNotFound(f"{path}: no pytorch_model*.bin files")
        for file in files:
            for name in self._state(file):
                self._file.setdefault(name, file)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}

    def _state(self, file: Path) -> dict[str, Any]:
        if file not in self._loaded:
            torch = self._torch
            _check_container(file)
            mmap = zipfile.is_zipfile(file)
            try:
                with warnings.catch_warnings():
                    # torch warns about pickle protocols and legacy formats; our errors say what matters.
                    warnings.simplefilter("ignore")
                    state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=mmap)
            except pickle.UnpicklingError as exc:
                first = first_line(exc)
                if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
                    raise UnsafeCheckpoint(
                        f"{file}: refused: this pickle asks to run code or build objects other than tensors "
                        f"({first[:160]}); awmtrace never executes checkpoint code. Convert it to safetensors "
                        "from a trusted environment, or obtain a safetensors copy"
                    ) from None
                raise FormatError(f"{file}: not a readable PyTorch checkpoint ({first[:160]})") from None
            except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
                first = first_line(exc)
                raise FormatError(f"{file}: not a readable PyTorch checkpoint ({first[:200]})") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise FormatError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
            self._loaded[file] = {k: v for k, v in state.items() if isinstance(v, self._torch.Tensor)}
        return self._loaded[file]

    def _tensor(self, name: str):
        if name not in self._file:
            raise MissingTensor(f"{self.path}: no tensor named {name!r}")
        file = self._file[name]
        state = self._state(file)
        if name not in state:
            raise MissingTensor(f"{file}: index says it holds {name!r} but it does not")
        return state[name]

    def names(self) -> list[str]:
        return list(self._file)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            self._shapes[name] = tuple(int(d) for d in self._tensor(name).shape)
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        if name not in self._dtypes:
            self._dtypes[name] = str(self._tensor(name).dtype).removeprefix("torch.")
        return self._dtypes[name]

    def file_of(self, name: str) -> str:
        return str(self._file.get(name, self.path))

    def _checked(self, name: str):
        t = self._tensor(name)
        check_weight_dtype(str(t.dtype), f"{self.file_of(name)}: tensor {name!r}")
        return t

    def read(self, name: str) -> np.ndarray:
        t = self._checked(name)
        return to_float32(t.detach().to(dtype=self._torch.float32).numpy(), f"{self.file_of(name)}: tensor {name!r}")

    def row_reader(self, name: str) -> RowReader:
        torch = self._torch
        t = self._checked(name)

        class _Rows:
            shape = tuple(t.shape)

            def __getitem__(self, rows: np.ndarray) -> np.ndarray:
                return t.index_select(0, torch.from_numpy(rows)).to(dtype=torch.float32).numpy()

        return RowReader(_Rows(), lambda block: block, f"{self.file_of(name)}: tensor {name!r}")

    def release(self) -> None:
        # Dropping the mapped state dicts unmaps their pages; they reload lazily.
        self._loaded.clear()

    def close(self) -> None:
        self._loaded.clear()
