"""What identifies a model's inputs, cheaply, without reading weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

from awmtrace.io.hub import snapshot_identity
from awmtrace.io.vocab import TOKENIZER_FILES

__all__ = ["model_identity"]


def model_identity(path: str | Path) -> str:
    """``hf:org/name@commit`` for Hub copies, else ``local:`` and a digest of file names, sizes and times.

    For a local directory: the names, sizes and modification times of its
    files; for a single file: that file plus ``config.json`` and tokenizer
    files beside it. A rewritten checkpoint gets a new identity; a Hub model
    keeps its identity wherever and whenever it was fetched.
    """
    p = Path(path)
    ident = snapshot_identity(p if p.is_dir() else p.parent) if p.exists() else None
    if ident is not None:
        return ident
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    else:
        files = [p]
        for pattern in ("config.json", *TOKENIZER_FILES):
            files.extend(f for f in p.parent.glob(pattern) if f.is_file() and f != p)
    h = hashlib.sha256()
    for f in sorted(set(files)):
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "local:" + h.hexdigest()[:32]
