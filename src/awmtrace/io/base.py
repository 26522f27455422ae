"""The interface every checkpoint reader implements.

A :class:`TensorSource` is lazy: opening it reads only headers; ``read`` and
``read_rows`` return float32 copies of one tensor (or some of its rows), so a
caller can hold one layer at a time and drop it. Readers never print and never
write next to the checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from awmtrace.errors import FormatError, InputNotFound, NotARegularFile, NumericalError, PermissionDenied

if TYPE_CHECKING:
    from awmtrace.io.raw import RawLayout

__all__ = [
    "TensorSource",
    "RowReader",
    "RAW_DTYPES",
    "SAFETENSORS_DTYPES",
    "read_json",
    "load_json",
    "parse_json",
    "parse_json_object",
    "plain_relative_name",
    "to_float32",
    "check_weight_dtype",
    "WEIGHT_DTYPES",
    "check_regular",
    "open_regular",
    "read_small_file",
    "is_regular_file",
    "os_error",
]

#: The one table of safetensors element types: bytes per element, and the numpy dtype that
#: :func:`read_raw_into` copies byte for byte (``None``: not read raw; ``BF16`` as its ``uint16`` bits).
#: Sub-byte types are not listed. :data:`RAW_DTYPES` and ``safetensors_header.DTYPE_BYTES`` are views of it.
SAFETENSORS_DTYPES: dict[str, tuple[int, np.dtype[Any] | None]] = {
    "BOOL": (1, None), "U8": (1, None), "I8": (1, None), "F8_E5M2": (1, None), "F8_E4M3": (1, None), "F8_E8M0": (1, None),
    "I16": (2, None), "U16": (2, None), "F16": (2, np.dtype("<f2")), "BF16": (2, np.dtype("<u2")),
    "I32": (4, None), "U32": (4, None), "F32": (4, np.dtype("<f4")),
    "I64": (8, None), "U64": (8, None), "F64": (8, None), "C64": (8, None),
}  # fmt: skip

#: Stored element types that :func:`read_raw_into` copies byte for byte.
RAW_DTYPES: dict[str, np.dtype[Any]] = {name: dt for name, (_, dt) in SAFETENSORS_DTYPES.items() if dt is not None}

#: The one table of stored weight types (safetensors and PyTorch spellings) -> canonical name.
#: Only floating types whose values are the weights themselves are read; the others are refused
#: with the reason in :data:`_REFUSED_WHY`.
WEIGHT_DTYPES = {
    "F64": "F64", "float64": "F64", "double": "F64",
    "F32": "F32", "float32": "F32", "float": "F32",
    "F16": "F16", "float16": "F16", "half": "F16",
    "BF16": "BF16", "bfloat16": "BF16",
}  # fmt: skip
_REFUSED_WHY = (
    (("F8", "float8"), "8-bit float weights are scaled per block by separate scale tensors; dequantize the checkpoint to BF16 first"),
    (("C", "complex"), "complex numbers are not weights of a language model; reading only their real part would score the wrong matrix"),
    (("BOOL", "bool"), "booleans are masks, not weights"),
    (("I", "U", "int", "uint"), "integer weights are quantized with separate scales; dequantize the checkpoint to BF16 first"),
)


def check_weight_dtype(dtype: str, where: str) -> str:
    """The canonical name (``F32``, ``BF16``, ...) of a readable weight type, else a one-line :class:`FormatError`.

    ``where`` names the file and tensor; ``dtype`` is the safetensors or
    PyTorch spelling (``F8_E4M3``, ``complex64``, ``torch.int8``...).
    """
    name = dtype.removeprefix("torch.")
    if name in WEIGHT_DTYPES:
        return WEIGHT_DTYPES[name]
    why = next((text for prefixes, text in _REFUSED_WHY if name.startswith(prefixes)), "awmtrace does not know this type")
    raise FormatError(f"{where} is stored as {name}, which awmtrace does not read as weights (it reads F64, F32, F16, BF16): {why}")


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
        # A run of consecutive rows (the usual case: tokenizers list ids in order) is sliced, not gathered.
        run = (
            isinstance(self._stored, np.ndarray)
            and rows.size > 1
            and int(rows[-1]) - int(rows[0]) == rows.size - 1
            and bool(np.all(np.diff(rows) == 1))
        )
        stored = self._stored[int(rows[0]) : int(rows[-1]) + 1] if run else self._stored[rows]
        values = self._convert(stored)
        if (
            isinstance(values, np.ndarray)
            and values.dtype == np.float32
            and values.flags.c_contiguous
            and not np.may_share_memory(values, self._stored)
        ):
            if not np.isfinite(values).all():
                bad = int(np.count_nonzero(~np.isfinite(values)))
                raise NumericalError(f"{self._where}: {bad} NaN/Inf value(s) in the weights; the checkpoint is damaged")
            return values  # already a fresh float32 array: no second copy
        return to_float32(values, self._where)

    def close(self) -> None:
        self._stored = None


def os_error(path: Path | str, exc: OSError) -> FormatError | InputNotFound | PermissionDenied:
    """The one-line error for an ``OSError`` met while reading ``path``: permission, absence, or anything else."""
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{path}: permission denied; this process may not read it (check the file's and its folders' permissions)")
    if isinstance(exc, FileNotFoundError):
        return InputNotFound(f"{path}: no such file or directory")
    return FormatError(f"{path}: cannot read: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: Path | str, mode: int, what: str) -> NotARegularFile:
    return NotARegularFile(f"{path}: is {_kind(mode)}, not a regular file; expected a {what}. awmtrace reads only regular files")


def check_regular(path: Path | str, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` (links followed) when it is a regular file; otherwise a one-line error.

    Used before a library opens a file by name: opening a FIFO for reading
    blocks until a writer comes, and a device may never end.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode, what)
    return st


def is_regular_file(path: Path, what: str = "file") -> bool:
    """Whether an optional file is there: ``False`` when absent (or a dangling link), ``True`` when a regular file.

    Anything else under that name (a FIFO, a directory, an unreadable
    folder on the way) is an error rather than silently "absent".
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode, what)
    return True


def open_regular(path: Path | str, what: str = "file", buffering: int = -1) -> io.BufferedReader | io.FileIO:
    """Open a regular file for binary reading; everything else is refused without blocking.

    ``O_NONBLOCK`` keeps the open itself from waiting on a FIFO swapped in
    after the ``stat``; ``fstat`` of the opened descriptor then decides.
    Permission and absence give :class:`PermissionDenied` / :class:`InputNotFound`.
    """
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise os_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(path, mode, what)
        return cast("io.BufferedReader | io.FileIO", os.fdopen(fd, "rb", buffering=buffering))
    except BaseException:
        os.close(fd)
        raise


def plain_relative_name(text: str) -> bool:
    """Whether ``text`` names a file inside a folder.

    That is: relative, ``/``-separated, no ``..``/``.``/empty parts, no backslash, NUL or drive letter.

    Names from an index or a Hub listing become paths; only such names may.
    """
    return bool(text) and not (
        "\\" in text
        or "\0" in text
        or text.startswith("/")
        or (len(text) >= 2 and text[1] == ":")
        or any(part in ("", ".", "..") for part in text.split("/"))
    )


#: Largest JSON or tokenizer file read whole (the largest real tokenizer.json files are ~35 MB).
MAX_TEXT_BYTES = 256 << 20


def read_small_file(path: Path | str, what: str) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_TEXT_BYTES` (config, tokenizer, index, null files)."""
    with open_regular(path, what) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_TEXT_BYTES:
                raise FormatError(f"{path}: {what} of {size} bytes, more than the {MAX_TEXT_BYTES} any real one needs; refused unread")
            return fh.read(MAX_TEXT_BYTES + 1)
        except OSError as exc:
            raise os_error(path, exc) from None


class _NonFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _no_constant(text: str) -> float:
    raise _NonFinite(text)


def parse_json(raw: bytes, where: Path | str, what: str = "JSON file") -> Any:
    """Parse JSON bytes (read from ``where``: a path, or a Hub file); every failure becomes a one-line :class:`FormatError`.

    Refused: invalid UTF-8 or JSON, nesting deep enough to exhaust the parser's
    recursion, numbers that overflow a float (``1e999``) and the non-standard
    ``NaN``/``Infinity``, integers too long to convert.
    """
    try:
        return json.loads(raw.decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except _NonFinite as exc:
        raise FormatError(f"{where}: {what} holds the number {exc} which is not finite; expected finite numbers") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: {what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise FormatError(f"{where}: {what} is nested too deeply to parse; not a file awmtrace reads") from None
    except (ValueError, OverflowError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"{where}: {what} holds a value that cannot be read ({first[:160]})") from None


def parse_json_object(raw: bytes, where: Path | str, what: str = "JSON file") -> dict[str, Any]:
    """Parse JSON bytes (see :func:`parse_json`), refusing anything but an object."""
    data = parse_json(raw, where, what)
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a JSON object, found {type(data).__name__}")
    return data


def load_json(path: Path, what: str = "JSON file") -> Any:
    """Parse any JSON value from the file ``path`` (see :func:`parse_json`); every failure is a one-line :class:`FormatError`.

    A FIFO or directory under the name is refused (never opened); unreadable files say why.
    """
    return parse_json(read_small_file(path, what), path, what)


def read_json(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """Parse a JSON object file (see :func:`load_json`), refusing anything but an object."""
    return parse_json_object(read_small_file(path, what), path, what)


def to_float32(array: np.ndarray, where: str) -> np.ndarray:
    """Convert to a fresh float32 array and refuse NaN/Inf, naming ``where`` in the error."""
    out = np.array(array, dtype=np.float32, copy=True, order="C")
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise NumericalError(f"{where}: {bad} NaN/Inf value(s) in the weights; the checkpoint is damaged")
    return out
