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

from awmtrace._version import __version__
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


#: A role is cached as its samples ``X = W'`` ``(n, d_out)`` instead of its Gram when ``FEATURE_RATIO * d_out <= n``
#: (grouped-query K): a pair then costs ``n d_out^2`` flops instead of passes over ``n^2`` values, and the entry is smaller.
FEATURE_RATIO = 4


class _ShapeChanged(Exception):
    """A layer's ``d_out`` differs from layer 0's (the feature form needs one shape)."""


def _gram_into(w: np.ndarray, workspace: cka.GramWorkspace, full: np.ndarray, half: np.ndarray, stats: np.ndarray) -> float:
    """Zero-diagonal Gram of ``w`` ``(d_out, n)`` scaled to max 1 into ``half`` ``(n, n)``.

    ``stats`` ``(2n + 2,)`` is filled; returns the scale.
    """
    n = w.shape[1]
    # The diagonal (squared sample norms) is kept apart: a rotation mixes it into the off-diagonal.
    diag = np.einsum("ij,ij->j", w, w, dtype=np.float64)
    terms = cka.gram_terms(w.T, out=workspace.buffer(n, 0))
    # Both triangles: a gather by the alignment index needs the whole matrix.
    np.add(terms.gram, terms.gram.T, out=full)
    # Two reductions instead of np.abs(): no (n, n) temporary.
    scale = max(float(full.max()), -float(full.min())) or 1.0
    np.multiply(full, np.float32(1.0 / scale), out=half, casting="same_kind")
    # Self terms from the rounded values the pairs will read, so both sides agree.
    np.copyto(full, half)
    rows = full.sum(axis=1, dtype=np.float64)
    stats[:n] = rows
    stats[n : 2 * n] = diag / scale
    stats[2 * n] = rows.sum()
    stats[2 * n + 1] = float(np.einsum("ij,ij->i", full, full).sum(dtype=np.float64))
    return scale


def _write_layers(model: Any, folder: Path, progress: Progress, force_gram: bool = False) -> list[dict[str, Any]]:
    """``q.npy``/``k.npy`` (Grams ``(L, n, n)`` or samples ``(L, n, d_out)``, float16) and ``stats.npy`` ``(L, 2, 2n + 2)``.

    Returns per role: file, form (``gram``/``feature``), shape, per-layer scales and CRC-32s.
    """
    view, source = model.view, model.source
    n_layers, n = view.n_layers, view.hidden_size
    workspace = cka.GramWorkspace()
    full = np.empty((n, n), dtype=np.float32)
    stats = np.zeros((n_layers, 2, 2 * n + 2), dtype=np.float64)
    first: tuple[np.ndarray, ...] | None = cache_mod.canonical_qk(source, view, 0)
    assert first is not None
    roles: list[dict[str, Any]] = []
    for name, w in zip(("q", "k"), first, strict=True):
        form = "feature" if not force_gram and FEATURE_RATIO * w.shape[0] <= n else "gram"
        shape = [n_layers, n, n] if form == "gram" else [n_layers, n, int(w.shape[0])]
        roles.append({"role": name, "file": f"{name}.npy", "form": form, "shape": shape, "scale": [], "crc32": []})
    halves = [np.empty(r["shape"][1:], dtype=np.float16) for r in roles]
    handles = [(folder / r["file"]).open("wb") for r in roles]
    try:
        for r, fh in zip(roles, handles, strict=True):
            cache_mod._write_npy_header(fh, np.dtype(np.float16), tuple(r["shape"]))
        for i in range(n_layers):
            if i + 1 < n_layers:
                nxt = view.layers[i + 1]
                source.prefetch(sorted({nxt.q.name, nxt.k.name}))
            mats = first if first is not None else cache_mod.canonical_qk(source, view, i)
            first = None
            for role, (w, r, half, fh) in enumerate(zip(mats, roles, halves, handles, strict=True)):
                if r["form"] == "gram":
                    scale = _gram_into(w, workspace, full, half, stats[i, role])
                else:
                    if w.shape[0] != r["shape"][2]:
                        raise _ShapeChanged
                    scale = float(np.abs(w).max()) or 1.0
                    np.multiply(w.T, np.float32(1.0 / scale), out=half, casting="same_kind")
                    # ||X'X||_F^2 of the rounded samples: unchanged by the row permutations and signs of an
                    # alignment, so a pair need not recompute the (p, p) product.
                    x = half.astype(np.float32)
                    xtx = x.T @ x
                    stats[i, role, 0] = float(np.einsum("ij,ij->i", xtx, xtx).sum(dtype=np.float64))
                fh.write(half.data)
                r["crc32"].append(zlib.crc32(half.data))
                r["scale"].append(scale)
            del mats
            progress("caching layers", i + 1, n_layers)
    finally:
        for fh in handles:
            fh.close()
    np.save(folder / "stats.npy", stats)
    return roles


def _write_roles(model: Any, folder: Path, progress: Progress) -> list[dict[str, Any]]:
    try:
        return _write_layers(model, folder, progress)
    except _ShapeChanged:
        return _write_layers(model, folder, progress, force_gram=True)


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
    roles = _write_roles(model, folder, progress)
    vocab_info: dict[str, Any] = {"present": model.vocab is not None, "error": str(model.vocab_error) if model.vocab_error else None}
    if model.vocab is not None:
        (folder / "vocab.json").write_text(json.dumps(cache_mod._vocab_to_json(model.vocab)), encoding="utf-8")
    dtypes = sorted({source.dtype(n) for layer in view.layers for n in (layer.q.name, layer.k.name)})
    src_path = Path(source.path)
    files = {}
    for name in ("embed.npy", "q.npy", "k.npy", "stats.npy", "vocab.json"):
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
        "roles": roles,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / cache_mod._MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest
