"""The one safetensors header parser (local files and Hub ranges): what it accepts and what it refuses."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from awmtrace.errors import FormatError
from awmtrace.io.safetensors_header import HeaderTensor, read_header, write_header


def _file(path: Path, header: dict[str, object], data: bytes) -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_a_file_written_by_safetensors_reads_back(tmp_path: Path) -> None:
    save_file({"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float16)}, str(tmp_path / "m.safetensors"), {"k": "v"})
    h = read_header(str(tmp_path / "m.safetensors"))
    assert set(h.tensors) == {"a", "b"}
    assert h.tensors["a"].shape == (2, 3) and h.tensors["a"].nbytes == 24 and h.metadata == {"k": "v"}
    assert h.size == (tmp_path / "m.safetensors").stat().st_size


def test_the_writer_and_the_parser_agree(tmp_path: Path) -> None:
    tensors = [HeaderTensor("x", "F32", (2, 2), 0, 16), HeaderTensor("y", "BF16", (3,), 16, 22)]
    prefix = write_header(tensors, {"origin": "test"})
    assert len(prefix) % 8 == 0
    path = tmp_path / "w.safetensors"
    path.write_bytes(prefix + bytes(22))
    h = read_header(str(path))
    assert [(t.name, t.dtype, t.shape, t.begin, t.end) for t in h.tensors.values()] == [
        ("x", "F32", (2, 2), 0, 16),
        ("y", "BF16", (3,), 16, 22),
    ]


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), "needs a different size"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap or overlap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(9), "the file has"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "negative"),
        ({"a": "nope"}, b"", "is not an object"),
        ({"a": {"dtype": "F32"}}, b"", "lacks dtype/shape/data_offsets"),
    ],
)
def test_inconsistent_headers_are_refused(tmp_path: Path, header: dict[str, object], data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_header(str(_file(tmp_path / "bad.safetensors", header, data)))


def test_lengths_that_do_not_fit_and_non_regular_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(FormatError, match="does not fit the file"):
        read_header(str(tmp_path / "huge.safetensors"))
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(FormatError, match="not a regular file"):
        read_header(str(tmp_path / "fifo.safetensors"))


def test_one_dtype_table_sizes_the_raw_reads() -> None:
    from awmtrace.io.base import RAW_DTYPES, SAFETENSORS_DTYPES
    from awmtrace.io.safetensors_header import DTYPE_BYTES

    assert set(RAW_DTYPES) == {"F32", "F16", "BF16"} and set(DTYPE_BYTES) == set(SAFETENSORS_DTYPES)
    assert all(RAW_DTYPES[k].itemsize == DTYPE_BYTES[k] for k in RAW_DTYPES)
