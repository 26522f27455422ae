"""Building one cache entry: read a model once, write its packed Grams, embedding and vocabulary.

Layers are read as ``awm compare`` reads them (:class:`awmtrace.extract.AlignedReader`:
raw reads on a background thread, bf16 widened with bit operations, norm gains
folded); each Q/K Gram is one SYRK, packed to bfloat16 by
:func:`awmtrace.core.packed.pack_gram`. Arrays are written with plain
sequential writes (an ``.npy`` header, then one layer at a time), never
through a writable memory map, so the dirty pages of a multi-GB entry never
count in this process's memory.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace._version import __version__
from awmtrace.collections import cache as cache_mod
from awmtrace.core import cka
from awmtrace.core.certify import ColumnCosines, abs_cosines
from awmtrace.core.packed import BLOCK_ROWS, pack_gram, packed_size, round_bf16, widen_bf16
from awmtrace.extract import AlignedReader
from awmtrace.io.card import card_base_models
from awmtrace.io.raw import iter_raw_rows
from awmtrace.types import Alignment

__all__ = ["write_entry", "input_facts", "vocab_rows", "column_gram", "column_cosines"]

Progress = Callable[[str, int, int], None]

_QUANTISED_OK = {"F32", "F16", "BF16", "F64"}


def vocab_rows(vocab: Any, n_rows: int) -> np.ndarray:
    """Sorted embedding rows a vocabulary names (all ``n_rows`` rows without one): the rows the column-cosine bound covers."""
    if vocab is None:
        return np.arange(n_rows, dtype=np.int64)
    ids = np.fromiter(vocab.keys.values(), dtype=np.int64, count=len(vocab.keys))
    return np.unique(ids[(ids >= 0) & (ids < n_rows)])


def _write_embedding(model: Any, path: Path) -> dict[str, Any]:
    """The token embedding, exactly as the alignment reads it; returns the manifest's ``embedding`` record.

    Stored BF16/F16/F32 rows are copied as stored (checked for NaN/Inf on their bits); anything else
    (quantised, pickled) goes through the row reader and is kept as float32.
    """
    source, name = model.source, model.view.embedding.name
    stored = source.dtype(name)
    shape = tuple(int(d) for d in source.shape(name))
    kind = stored if stored in ("BF16", "F16") else "F32"
    dtypes: dict[str, np.dtype[Any]] = {"BF16": np.dtype(np.uint16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
    layout = source.raw_layout(name)
    raw = layout is not None and layout.dtype == kind and tuple(layout.shape) == shape and len(shape) == 2
    reader = None if raw else source.row_reader(name)
    try:
        with path.open("wb") as fh:
            cache_mod._write_npy_header(fh, dtypes[kind], shape)
            if raw:
                assert layout is not None
                for block in iter_raw_rows(layout, cache_mod._EMBED_BLOCK, f"{source.path}: {name}"):
                    fh.write(block.data)
            else:
                assert reader is not None
                for start in range(0, shape[0], cache_mod._EMBED_BLOCK):
                    rows = reader.take(np.arange(start, min(start + cache_mod._EMBED_BLOCK, shape[0])))
                    # bf16 rows came from bf16: their top 16 bits are the stored value, exactly.
                    block = (rows.view(np.uint32) >> 16).astype(np.uint16) if kind == "BF16" else rows.astype(dtypes[kind])
                    fh.write(block.tobytes())
    finally:
        if reader is not None:
            reader.close()
        source.release()
    return {"file": path.name, "dtype": kind, "shape": list(shape)}


#: A pair's shared tokens may leave out at most this many of the base's vocabulary rows for the base's column
#: cosines to be corrected (a rank update per missing row); with more, the alignment takes the full path.
MAX_MISSING_ROWS = 1024


def column_gram(entry: Any) -> np.ndarray:
    """``(n, n)`` float64 ``E'E`` of a cached model's embedding over the rows its vocabulary covers.

    Computed from the cached embedding the first time a pair needs it (a SYRK over the rows, ``V n^2`` flops)
    and kept beside the entry as ``colgram-<crc32>.npy``, written atomically and checked against the
    checksum in its name when read back; a cache that cannot be written only loses the copy.
    """
    for path in sorted(entry.path.glob("colgram-*.npy")):
        try:
            if f"{cache_mod._crc_file(path):08x}" == path.stem.split("-", 1)[1]:
                return np.asarray(np.load(path), dtype=np.float64)
        except (OSError, ValueError):
            pass
        path.unlink(missing_ok=True)
    emb = entry.embedding()
    covered = np.zeros(emb.shape[0], dtype=bool)
    covered[vocab_rows(entry.vocab(), emb.shape[0])] = True
    acc = ColumnCosines(emb.shape[1])
    for start in range(0, emb.shape[0], cache_mod._EMBED_BLOCK):
        stop = min(start + cache_mod._EMBED_BLOCK, emb.shape[0])
        acc.add(entry.embedding_to_float32(emb[start:stop][covered[start:stop]]))
    gram = acc.gram()
    try:
        tmp = entry.path / f".colgram.{os.getpid()}.npy"
        np.save(tmp, gram)
        os.replace(tmp, entry.path / f"colgram-{cache_mod._crc_file(tmp):08x}.npy")
    except OSError:
        pass  # a read-only cache: recomputed next time
    return gram


def column_cosines(entry: Any, ids: np.ndarray) -> np.ndarray | None:
    """``(n, n)`` |cos| between a cached embedding's columns over exactly the rows ``ids`` (:func:`~awmtrace.core.certify.abs_cosines`).

    From :func:`column_gram` less the rows of its vocabulary that ``ids`` leaves out; ``None`` when ``ids`` holds a
    row outside the vocabulary or leaves out more than :data:`MAX_MISSING_ROWS`.
    """
    emb = entry.embedding()
    rows = vocab_rows(entry.vocab(), emb.shape[0])
    shared = np.unique(np.asarray(ids, dtype=np.int64))
    missing = np.setdiff1d(rows, shared, assume_unique=True)
    if missing.size > MAX_MISSING_ROWS or np.setdiff1d(shared, rows, assume_unique=True).size:
        return None
    gram = column_gram(entry)
    if missing.size:
        left_out = entry.embedding_to_float32(emb[missing]).astype(np.float64)
        gram = gram - left_out.T @ left_out
    # A column that is zero on these rows bounds nothing (and the alignment refuses it): no proof.
    return abs_cosines(gram) if bool(np.all(np.diag(gram) > 0.0)) else None


#: A role is cached as its samples ``X = W'`` ``(n, d_out)`` instead of its Gram when ``FEATURE_RATIO * d_out <= n``
#: (grouped-query K): a pair then costs ``n d_out^2`` flops instead of passes over ``n^2`` values, and the entry is smaller.
FEATURE_RATIO = 4


class _ShapeChanged(Exception):
    """A layer's ``d_out`` differs from layer 0's (the feature form needs one shape)."""


def _identity(n: int) -> Alignment:
    """The alignment of a model with itself: what lets :class:`AlignedReader` read one model's layers as they are."""
    return Alignment(index=np.arange(n), signs=np.ones(n, dtype=np.float32), cosines=np.ones(n), base="a",
                     hidden_size_a=n, hidden_size_b=n, n_shared_tokens=0)  # fmt: skip


def _packed_gram(x: np.ndarray, buf: np.ndarray, out: np.ndarray, stats: np.ndarray) -> None:
    """Pack the zero-diagonal Gram of samples ``x`` ``(n, d_out)`` into ``out`` (:func:`~awmtrace.core.packed.packed_size` uint16).

    Fills ``stats`` ``(2n + 2,)``.
    """
    n = x.shape[0]
    k = cka._syrk_upper(x, out=buf)
    diag = np.einsum("ii->i", k)
    if cka.float32_out_of_range(float(diag.max())):
        # UCKA is scale-invariant: a power of two brings an overflowing (or vanishing) Gram back into range.
        scaled = cka._rescaled(x)
        if scaled is not None:
            k = cka._syrk_upper(scaled, out=buf)
    st = pack_gram(k, out)
    stats[:n] = st.rows
    stats[n : 2 * n] = np.einsum("ii->i", k)
    stats[2 * n] = st.total
    stats[2 * n + 1] = st.sumsq


def _packed_samples(x: np.ndarray, out: np.ndarray, stats: np.ndarray) -> None:
    """Samples ``x`` ``(n, d_out)`` rounded to bfloat16 into ``out``; ``stats[0]`` = ``||X'X||_F^2`` of the rounded samples.

    That norm is unchanged by the row permutations and signs of an alignment, so a pair need not recompute the ``(p, p)`` product.
    """
    # UCKA is scale-invariant: an exact power of two brings the largest value near 1, so that X'X stays within float32
    # whatever the weights' scale (bfloat16 rounding commutes with it).
    peak = float(np.max(np.abs(x), initial=0.0))
    if peak > 0.0:
        x = x * np.float32(2.0 ** -math.frexp(peak)[1])
    round_bf16(x, out, np.empty(x.shape, dtype=np.uint32))
    stats[0] = cka.xtx_sq_norm(widen_bf16(out, np.empty(x.shape, dtype=np.float32)))


def _roles(first: tuple[np.ndarray, np.ndarray], n: int, n_layers: int, force_gram: bool) -> list[dict[str, Any]]:
    roles = []
    for name, x in zip(("q", "k"), first, strict=True):
        d_out = int(x.shape[1])
        form = "feature" if not force_gram and FEATURE_RATIO * d_out <= n else "gram"
        shape = [n_layers, packed_size(n)] if form == "gram" else [n_layers, n, d_out]
        roles.append({"role": name, "file": f"{name}.npy", "form": form, "shape": shape, "block": BLOCK_ROWS, "crc32": []})
    return roles


def _write_layers(model: Any, folder: Path, progress: Progress, force_gram: bool = False) -> list[dict[str, Any]]:
    """``q.npy``/``k.npy`` (packed Grams ``(L, packed_size(n))`` or samples ``(L, n, d_out)``, bfloat16 bits) and ``stats.npy``.

    Returns per role: file, form (``gram``/``feature``), shape and per-layer CRC-32s.
    """
    view = model.view
    n_layers, n = view.n_layers, view.hidden_size
    reader = AlignedReader(model, model, _identity(n))
    buf = np.zeros((n, n), dtype=np.float32, order="F")
    stats = np.zeros((n_layers, 2, 2 * n + 2), dtype=np.float64)
    mats = reader.samples("a", 0)
    reader.prefetch("a", 1)
    roles = _roles(mats, n, n_layers, force_gram)
    halves = [np.empty(r["shape"][1:], dtype=np.uint16) for r in roles]
    handles = [(folder / r["file"]).open("wb") for r in roles]
    try:
        for r, fh in zip(roles, handles, strict=True):
            cache_mod._write_npy_header(fh, np.dtype(np.uint16), tuple(r["shape"]))
        for i in range(n_layers):
            if i:
                mats = reader.samples("a", i)
                reader.prefetch("a", i + 1)
            for role, (x, r, half, fh) in enumerate(zip(mats, roles, halves, handles, strict=True)):
                if r["form"] == "gram":
                    _packed_gram(x, buf, half, stats[i, role])
                elif x.shape[1] != r["shape"][-1]:
                    raise _ShapeChanged
                else:
                    _packed_samples(x, half, stats[i, role])
                fh.write(half.data)
                r["crc32"].append(zlib.crc32(half.data))
            progress("caching layers", i + 1, n_layers)
    finally:
        for fh in handles:
            fh.close()
        model.source.release()
    np.save(folder / "stats.npy", stats)
    return roles


def _write_roles(model: Any, folder: Path, progress: Progress) -> list[dict[str, Any]]:
    try:
        return _write_layers(model, folder, progress)
    except _ShapeChanged:
        return _write_layers(model, folder, progress, force_gram=True)


def input_facts(path: Path | str) -> dict[str, Any]:
    """What belongs to one input rather than to its content (so never to the content-keyed cache entry).

    ``hub_id`` (the repo a Hub snapshot came from), ``uploaded`` (its commit date), and ``card_base_model`` (the
    ``base_model`` its model card declares): two inputs with the same weights may come from different repos.
    """
    from awmtrace.io.hub import snapshot_commit_date, snapshot_identity

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    ident = snapshot_identity(folder) if p.exists() else None
    return {
        "hub_id": ident[3:].split("@", 1)[0] if ident else None,
        "uploaded": snapshot_commit_date(p) if p.exists() else None,
        "card_base_model": card_base_models(folder) if p.exists() else [],
    }


def write_entry(model: Any, folder: Path, key: str, fingerprint: str, options: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
    """Read ``model`` (a :class:`awmtrace.pipeline.Model`) once and write a complete entry into ``folder``; returns its manifest."""
    progress = progress or (lambda stage, done, total: None)
    view, source = model.view, model.source
    embedding = _write_embedding(model, folder / "embed.npy")
    roles = _write_roles(model, folder, progress)
    vocab_info: dict[str, Any] = {"present": model.vocab is not None, "error": str(model.vocab_error) if model.vocab_error else None}
    if model.vocab is not None:
        (folder / "vocab.json").write_text(json.dumps(cache_mod._vocab_to_json(model.vocab)), encoding="utf-8")
    dtypes = sorted({source.dtype(n) for layer in view.layers for n in (layer.q.name, layer.k.name)})
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
        "vocab": vocab_info,
        "embedding": embedding,
        "roles": roles,
        "files": _file_records(folder),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / cache_mod._MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size, modification time and CRC-32 of every array file: what :meth:`ModelCache.open` checks an entry against."""
    files = {}
    for name in cache_mod.ENTRY_FILES:
        f = folder / name
        if f.exists():
            st = os.stat(f)
            # q.npy/k.npy carry a CRC per layer in their role record instead of one over the whole file.
            crc = None if name in cache_mod.LAYER_FILES else cache_mod._crc_file(f)
            files[name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": crc}
    return files
