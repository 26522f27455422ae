"""Bytes to arrays and metadata: checkpoint readers and vocabularies. No math, no printing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from awmtrace.errors import FormatError, InputNotFound
from awmtrace.io.base import RowReader, TensorSource, check_regular, is_regular_file, open_regular, os_error

__all__ = ["TensorSource", "RowReader", "open_source", "detect_format", "WEIGHT_SUFFIXES"]

# The safetensors index name (io.safetensors_dir.INDEX_NAME; not imported here to keep safetensors lazy).
INDEX_NAME = "model.safetensors.index.json"

WEIGHT_SUFFIXES = {".safetensors": "safetensors", ".gguf": "gguf", ".bin": "torch", ".pt": "torch", ".pth": "torch"}


def _sniff(path: Path) -> str | None:
    with open_regular(path, "checkpoint file") as fh:
        try:
            head = fh.read(8)
        except OSError as exc:
            raise os_error(path, exc) from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 8 and int.from_bytes(head, "little") < (1 << 27) and head != b"\0" * 8:
        return "safetensors"
    return None


def detect_format(path: Path) -> str:
    """``"safetensors"``, ``"gguf"`` or ``"torch"`` for a file or a model directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise os_error(path, exc) from None
    if not stat.S_ISDIR(mode):
        check_regular(path, "checkpoint file or model directory")
        fmt = WEIGHT_SUFFIXES.get(path.suffix.lower()) or _sniff(path)
        if fmt is None:
            raise FormatError(f"{path}: not a checkpoint awmtrace reads (expected .safetensors, .gguf or pytorch .bin)")
        return fmt
    try:
        os.listdir(path)  # glob() hides an unreadable folder as an empty one
    except OSError as exc:
        raise os_error(path, exc) from None
    if any(path.glob("*.safetensors")) or is_regular_file(path / INDEX_NAME, "safetensors index"):
        return "safetensors"
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf"
    if len(ggufs) > 1:
        raise InputNotFound(f"{path}: holds {len(ggufs)} .gguf files; pass the one to read")
    if any(path.glob("*.bin")) or is_regular_file(path / "pytorch_model.bin.index.json", "PyTorch index"):
        return "torch"
    raise InputNotFound(f"{path}: no weights here (looked for *.safetensors, model.safetensors.index.json, *.gguf, pytorch_model*.bin)")


def open_source(path: Path) -> TensorSource:
    """Open a checkpoint lazily: only headers are read."""
    fmt = detect_format(path)
    if fmt == "safetensors":
        from awmtrace.io.safetensors_dir import SafetensorsSource

        return SafetensorsSource(path)
    if fmt == "gguf":
        from awmtrace.io.gguf_file import GGUFSource

        return GGUFSource(path if path.is_file() else sorted(path.glob("*.gguf"))[0])
    from awmtrace.io.torch_bin import TorchBinSource

    return TorchBinSource(path)
