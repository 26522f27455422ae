"""Errors meant for people.

Every message is one line that says what was expected, what was found and,
where there is one, what to do. The CLI prints ``str(error)`` and exits with
``error.exit_code`` (3: bad input; 2: usage); it never shows a traceback for
an :class:`AwmError`.
"""

from __future__ import annotations


class AwmError(Exception):
    """Base class of every error awmtrace raises on purpose."""

    exit_code = 3  # the CLI's "bad input"; see awmtrace.cli.common.EXIT_*


class InputNotFound(AwmError):
    """A path or model id that does not exist or holds no weights."""


class FormatError(AwmError):
    """A file that is truncated, corrupt, or not what its name says."""


class PermissionDenied(AwmError):
    """A file or folder that exists but that this process may not read."""


class NotARegularFile(FormatError):
    """A FIFO, device, socket or directory where a regular file is expected (never opened: a FIFO would block)."""


class UnsafeCheckpoint(FormatError):
    """A pickle checkpoint that would need arbitrary code to load."""


class UnsupportedArchitecture(AwmError):
    """Tensor names or a fused-QKV layout that the architecture table does not know."""


class MissingTensor(AwmError):
    """A tensor the method needs is absent from the checkpoint."""


class VocabularyError(AwmError):
    """No tokenizer found, an unreadable one, or too few tokens shared for alignment."""


class NumericalError(AwmError):
    """NaN/Inf weights, or a matrix without variance."""


class OptionalDependencyMissing(AwmError):
    """A feature needs an optional extra (e.g. ``pip install 'awmtrace[torch]'``)."""


class HubError(AwmError):
    """A Hugging Face Hub request failed (not found, gated, offline, interrupted)."""


class StoreError(AwmError):
    """A results store that cannot be opened, is not a store, or is from a newer schema."""


class StatsError(AwmError):
    """Statistics that cannot be computed from the given data (no variance, one class only, ...)."""


class UsageError(AwmError):
    """Options that contradict each other or a value out of range."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none (for one-line errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
