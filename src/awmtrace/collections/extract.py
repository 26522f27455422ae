"""Building one cache entry: read a model once, write its Grams, embedding and vocabulary.

Arrays are written to files with plain sequential writes (an ``.npy`` header,
then one Gram at a time), never through a writable memory map, so the
dirty pages of a multi-GB entry never count in this process's memory.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace import __version__
from awmtrace.collections import cache as cache_mod
from awmtrace.core import cka

__all__ = ["write_entry", "model_card"]

Progress = Callable[[str, int, int], None]

_QUANTISED_OK = {"F32", "F16", "BF16", "F64"}


def _write_embedding(model: Any, path: Path) -> tuple[str, list[int], int]:
    """The token embedding, exactly as the alignment reads it; returns ``(dtype, shape, crc32)``."""
    source, name = model.source, model.view.embedding.name
    stored = source.dtype(name)
    shape = tuple(int(d) for d in source.shape(name))
    kind = stored if stored in ("BF16", "F16") else "F32"
    dtypes: dict[str, np.dtype[Any]] = {"BF16": np.dtype(np.uint16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
    np_dtype = dtypes[kind]
    reader = source.row_reader(name)
    crc = 0
    try:
        with path.open("wb") as fh:
            cache_mod._write_npy_header(fh, np_dtype, shape)
            for start in range(0, shape[0], cache_mod._EMBED_BLOCK):
                rows = reader.take(np.arange(start, min(start + cache_mod._EMBED_BLOCK, shape[0])))
                if kind == "BF16":
                    # The rows came from bf16: their top 16 bits are the stored value, exactly.
                    block = (rows.view(np.uint32) >> 16).astype(np.uint16)
                else:
                    block = rows.astype(np_dtype)
                fh.write(block.tobytes())
        crc = cache_mod._crc_file(path)
    finally:
        reader.close()
        source.release()
    return kind, list(shape), crc


def _write_grams(model: Any, folder: Path, progress: Progress) -> tuple[list[list[float]], list[list[int]]]:
    """``grams.npy`` ``(L, 2, n, n)`` float16 and ``stats.npy`` ``(L, 2, 2n + 2)``; returns per-Gram scales and CRC-32s."""
    view, source = model.view, model.source
    n_layers, n = view.n_layers, view.hidden_size
    workspace = cka.GramWorkspace()
    full = np.empty((n, n), dtype=np.float32)
    half = np.empty((n, n), dtype=np.float16)
    stats = np.zeros((n_layers, 2, 2 * n + 2), dtype=np.float64)
    scales: list[list[float]] = []
    crcs: list[list[int]] = []
    with (folder / "grams.npy").open("wb") as fh:
        cache_mod._write_npy_header(fh, np.dtype(np.float16), (n_layers, 2, n, n))
        for i in range(n_layers):
            if i + 1 < n_layers:
                nxt = view.layers[i + 1]
                source.prefetch(sorted({nxt.q.name, nxt.k.name}))
            q, k = cache_mod.canonical_qk(source, view, i)
            scales.append([])
            crcs.append([])
            for role, w in enumerate((q, k)):
                # The diagonal (squared sample norms) is kept apart: a rotation mixes it into the off-diagonal.
                diag = np.einsum("ij,ij->j", w, w, dtype=np.float64)
                terms = cka.gram_terms(w.T, out=workspace.buffer(n, 0))
                # Both triangles: a gather by the alignment index needs the whole matrix.
                np.add(terms.gram, terms.gram.T, out=full)
                scale = float(np.abs(full).max()) or 1.0
                np.multiply(full, np.float32(1.0 / scale), out=full)
                np.copyto(half, full, casting="same_kind")
                fh.write(half.data)
                crcs[i].append(zlib.crc32(half.data))
                scales[i].append(scale)
                # Self terms from the rounded values the pairs will read, so both sides agree.
                np.copyto(full, half)
                rows = full.sum(axis=1, dtype=np.float64)
                stats[i, role, :n] = rows
                stats[i, role, n : 2 * n] = diag / scale
                stats[i, role, 2 * n] = rows.sum()
                stats[i, role, 2 * n + 1] = float(np.einsum("ij,ij->i", full, full).sum(dtype=np.float64))
            del q, k
            progress("caching layers", i + 1, n_layers)
    np.save(folder / "stats.npy", stats)
    return scales, crcs


_FRONT = re.compile(r"\A---\s*\n(.*?)\n---", re.S)


def model_card(folder: Path) -> dict[str, Any]:
    """``base_model`` from a Hub model card (``README.md`` front matter) beside the weights, when there is one."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:65536]
    except OSError:
        return {}
    m = _FRONT.match(text)
    if not m:
        return {}
    bases: list[str] = []
    lines = m.group(1).splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("base_model:"):
            continue
        value = line.split(":", 1)[1].strip().strip("'\"")
        if value:
            bases.append(value)
        for follow in lines[i + 1 :]:
            item = follow.strip()
            if not item.startswith("- "):
                break
            bases.append(item[2:].strip().strip("'\""))
    return {"base_model": bases} if bases else {}


def write_entry(model: Any, folder: Path, key: str, fingerprint: str, options: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
    """Read ``model`` (a :class:`awmtrace.pipeline.Model`) once and write a complete entry into ``folder``; returns its manifest."""
    progress = progress or (lambda stage, done, total: None)
    view, source = model.view, model.source
    emb_dtype, emb_shape, emb_crc = _write_embedding(model, folder / "embed.npy")
    scales, crcs = _write_grams(model, folder, progress)
    vocab_info: dict[str, Any] = {"present": model.vocab is not None, "error": str(model.vocab_error) if model.vocab_error else None}
    if model.vocab is not None:
        (folder / "vocab.json").write_text(json.dumps(cache_mod._vocab_to_json(model.vocab)), encoding="utf-8")
    dtypes = sorted({source.dtype(n) for layer in view.layers for n in (layer.q.name, layer.k.name)})
    src_path = Path(source.path)
    files = {}
    for name in ("embed.npy", "grams.npy", "stats.npy", "vocab.json"):
        f = folder / name
        if f.exists():
            files[name] = {"bytes": f.stat().st_size, "crc32": emb_crc if name == "embed.npy" else None}
    for name in ("stats.npy", "vocab.json"):
        if name in files:
            files[name]["crc32"] = cache_mod._crc_file(folder / name)
    summary = view.summary()
    summary["embedding"] = view.embedding.to_dict()
    manifest = {
        "kind": cache_mod._KIND,
        "cache_format": cache_mod.CACHE_FORMAT,
        "tool_version": __version__,
        "key": key,
        "content_fingerprint": fingerprint,
        "options": options,
        "spec": model.spec,
        "view": summary,
        "weight_dtypes": dtypes,
        "quantised": any(d not in _QUANTISED_OK for d in dtypes),
        "card": model_card(src_path if src_path.is_dir() else src_path.parent),
        "vocab": vocab_info,
        "embedding": {"file": "embed.npy", "dtype": emb_dtype, "shape": emb_shape},
        "grams": {
            "file": "grams.npy",
            "dtype": "float16",
            "shape": [view.n_layers, 2, view.hidden_size, view.hidden_size],
            "scale": scales,
            "crc32": crcs,
        },  # fmt: skip
        "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / cache_mod._MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest
