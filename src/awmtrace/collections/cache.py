"""Per-model cache: what a further pair needs from a model, extracted once and memory-mapped.

An entry is a folder named by a key over the model's content fingerprint
(:func:`awmtrace.io.fingerprint.content_fingerprint`), the awmtrace version
and the options that change what is extracted. It holds

* ``q.npy``, ``k.npy``: per layer, bfloat16 bits (uint16), either the Gram
  matrix ``K~ = X X'`` ``(n, n)`` with the diagonal zeroed (the unbiased HSIC
  only reads the off-diagonal), both triangles
  (:func:`awmtrace.core.packed.pack_gram`), or, for narrow matrices such as
  grouped-query K, the samples ``X = W'`` ``(n, d_out)`` themselves (see
  :data:`awmtrace.collections.extract.FEATURE_RATIO`);
* ``stats.npy``: ``(L, 2, 2n + 2)`` float64 per-Gram row sums, diagonal (kept
  apart for rotations), total and sum of squares of the stored (rounded)
  Gram, so that self terms need no pass;
* ``embed.npy``: the token embedding ``(V, n)`` exactly as read (bf16 bits,
  float16 or float32), for the hidden-dimension alignment, and, once a pair
  has needed it, ``colgram-<crc32>.npy``: ``(n, n)`` float64 ``E'E`` over the
  rows its vocabulary covers (:func:`awmtrace.collections.extract.column_gram`);
* ``vocab.json``: the normalised vocabulary; ``manifest.json``: the model's
  description, and the size, modification time and CRC-32 of every file
  (per layer for ``q.npy``/``k.npy``).

Entries are written into a temporary folder and renamed into place, so a
killed build leaves nothing half-written. An entry that fails a check
(manifest, size, checksum, version) is removed and rebuilt, never used.
The small files are checksummed at every open; a large file is checksummed
when its size or modification time differs from the manifest's (a file
rewritten in place, or copied without its times), and always by
``awm cache list --verify``. A size limit evicts the least recently used entries.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from awmtrace._version import __version__
from awmtrace.arch import resolve as arch_resolve
from awmtrace.core.packed import widen_bf16
from awmtrace.errors import AwmError
from awmtrace.io.fingerprint import content_fingerprint
from awmtrace.io.vocab import Vocab
from awmtrace.pipeline import tensors_read
from awmtrace.types import ModelView, TensorRef

__all__ = [
    "CacheError",
    "CacheCorrupt",
    "CacheEntry",
    "ModelCache",
    "default_cache_dir",
    "extraction_options",
    "entry_key",
    "DEFAULT_LIMIT_BYTES",
]

log = logging.getLogger("awmtrace")

#: Layout version of an entry; entries of another layout are rebuilt.
CACHE_FORMAT = 4
#: Default size limit of a cache folder.
DEFAULT_LIMIT_BYTES = 64 << 30
_MANIFEST = "manifest.json"
_LAST_USED = "last_used"
_KIND = "awmtrace-model-cache"
#: Rows of the embedding copied at a time while building an entry.
_EMBED_BLOCK = 4096
#: Files an entry may hold besides its manifest; the ``LAYER_FILES`` carry one CRC-32 per layer.
ENTRY_FILES = ("embed.npy", "q.npy", "k.npy", "stats.npy", "vocab.json")
LAYER_FILES = ("q.npy", "k.npy")
_SMALL_FILES = ("stats.npy", "vocab.json")

Progress = Callable[[str, int, int], None]


class CacheError(AwmError):
    """The cache folder cannot be used (not writable, full, ...)."""


class CacheCorrupt(AwmError):
    """A cache entry failed a check; it is rebuilt, never used."""


def default_cache_dir() -> Path:
    """``$AWMTRACE_CACHE/models``, else ``~/.cache/awmtrace/models``."""
    root = os.environ.get("AWMTRACE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "awmtrace"
    return base / "models"


def extraction_options() -> dict[str, Any]:
    """Options that change what an entry holds (part of its key).

    ``canonical`` names the Q/K form: ``"W diag(gamma)"`` once norm gains are
    folded (as :class:`awmtrace.extract.AlignedReader` reads them), ``"W"`` before that code exists.
    """
    folds = hasattr(arch_resolve, "read_norm")
    return {"gram_dtype": "bfloat16", "canonical": "W diag(gamma)" if folds else "W", "weights": ["q", "k"]}


def entry_key(fingerprint: str, options: dict[str, Any]) -> str:
    payload = json.dumps({"fp": fingerprint, "v": __version__, "f": CACHE_FORMAT, "o": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


def _crc_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while block := fh.read(8 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _write_npy_header(fh: BinaryIO, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(fh, header)


def _vocab_to_json(vocab: Vocab) -> dict[str, Any]:
    strs = {k: i for k, i in vocab.keys.items() if isinstance(k, str)}
    raw = {k.hex(): i for k, i in vocab.keys.items() if isinstance(k, bytes)}
    return {"kind": vocab.kind, "source": vocab.source, "size": vocab.size, "n_special": vocab.n_special, "str": strs, "bytes": raw}


def _vocab_from_json(d: dict[str, Any]) -> Vocab:
    keys: dict[bytes | str, int] = {k: int(i) for k, i in d["str"].items()}
    keys.update({bytes.fromhex(k): int(i) for k, i in d["bytes"].items()})
    return Vocab(keys=keys, kind=d["kind"], source=d["source"], size=int(d["size"]), n_special=int(d["n_special"]))


@dataclass
class CacheEntry:
    """One model's cache folder, its manifest checked (see :meth:`ModelCache.open`)."""

    path: Path
    manifest: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _parsed: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["content_fingerprint"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["view"]["n_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["view"]["hidden_size"])

    def view(self) -> ModelView:
        """The model's :class:`ModelView` without layer references (enough for alignment and reports)."""
        v = dict(self.manifest["view"])
        emb = v.pop("embedding")
        return ModelView(
            path=v["path"],
            format=v["format"],
            architecture=v["architecture"],
            family=v["family"],
            hidden_size=int(v["hidden_size"]),
            n_layers=int(v["n_layers"]),
            n_heads=v.get("n_heads"),
            n_kv_heads=v.get("n_kv_heads"),
            head_dim=v.get("head_dim"),
            vocab_size=int(v["vocab_size"]),
            embedding=TensorRef(name=emb["name"], role=emb.get("role", "token_embd"), how=emb.get("how", "cache")),
            layers=(),
            tokenizer_source=v.get("tokenizer_source"),
            notes=tuple(v.get("notes", ())),
            family_reason=v.get("family_reason", ""),
        )

    def vocab(self) -> Vocab | None:
        """The cached vocabulary (parsed once per entry object)."""
        if not self.manifest["vocab"]["present"]:
            return None
        if "vocab" not in self._parsed:
            self._parsed["vocab"] = _vocab_from_json(json.loads((self.path / "vocab.json").read_text(encoding="utf-8")))
        return self._parsed["vocab"]

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = self._arrays[name] = np.load(self.path / name, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheCorrupt(f"{self.path / name}: unreadable ({exc})") from None
        return arr

    def embedding(self) -> np.ndarray:
        """``(V, n)`` stored embedding (memory-mapped)."""
        return self._array("embed.npy")

    def embedding_to_float32(self, block: np.ndarray) -> np.ndarray:
        if self.manifest["embedding"]["dtype"] == "BF16":
            return widen_bf16(block, np.empty(block.shape, dtype=np.float32))
        return block.astype(np.float32)

    def form(self, role: int) -> str:
        """``"gram"`` or ``"feature"``: how role 0 (Q) or 1 (K) is stored."""
        return str(self.manifest["roles"][role]["form"])

    def stored(self, layer: int, role: int) -> np.ndarray:
        """Layer ``layer``'s stored bfloat16 bits (uint16, memory-mapped) of role 0 = Q, 1 = K: Gram ``(n, n)`` or samples ``(n, p)``."""
        return self._array(self.manifest["roles"][role]["file"])[layer]

    def stats(self, layer: int, role: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Row sums ``(n,)``, diagonal ``(n,)`` (float64, the stored Gram's scale), total and sum of squares of Gram ``(layer, role)``."""
        s = self._array("stats.npy")[layer, role]
        n = (s.shape[0] - 2) // 2
        return np.asarray(s[:n]), np.asarray(s[n : 2 * n]), float(s[-2]), float(s[-1])

    def release(self) -> None:
        """Drop mapped pages touched so far (they count in RSS while mapped)."""
        for arr in self._arrays.values():
            mm = getattr(arr, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        self.release()
        self._arrays.clear()

    def unchanged(self) -> bool:
        """Whether every file still has the size and modification time its manifest records (a few ``stat`` calls)."""
        try:
            return all(
                (st := (self.path / name).stat()).st_size == info["bytes"] and st.st_mtime_ns == info.get("mtime_ns")
                for name, info in self.manifest["files"].items()
            )
        except OSError:
            return False

    def touch(self) -> None:
        try:
            (self.path / _LAST_USED).touch()
        except OSError:
            pass  # a read-only shared cache is still usable; recency is then not recorded


def _check_manifest(path: Path, m: Any, key: str | None, verify: bool = False) -> None:
    """Raise :class:`CacheCorrupt` unless the entry at ``path`` matches its manifest ``m`` (see the module docstring).

    ``verify``: checksum every file, whatever its modification time.
    """
    if not isinstance(m, dict) or m.get("kind") != _KIND:
        raise CacheCorrupt(f"{path}: not an awmtrace cache entry")
    if m.get("cache_format") != CACHE_FORMAT or m.get("tool_version") != __version__:
        raise CacheCorrupt(f"{path}: written by awmtrace {m.get('tool_version')} (cache format {m.get('cache_format')})")
    if key is not None and m.get("key") != key:
        raise CacheCorrupt(f"{path}: manifest key {m.get('key')} does not match its folder")
    for name in ENTRY_FILES:
        info = m.get("files", {}).get(name)
        if info is None:
            if name != "vocab.json":
                raise CacheCorrupt(f"{path}: the manifest does not list {name}")
            continue
        f = path / name
        try:
            st = f.stat()
        except OSError:
            raise CacheCorrupt(f"{path}: {name} is missing") from None
        if st.st_size != info["bytes"]:
            raise CacheCorrupt(f"{path}: {name} has the wrong size")
        if verify or name in _SMALL_FILES or st.st_mtime_ns != info.get("mtime_ns"):
            _verify_file(path, m, name, info)


def _verify_file(path: Path, m: dict[str, Any], name: str, info: dict[str, Any]) -> None:
    if name not in LAYER_FILES:
        if _crc_file(path / name) != info["crc32"]:
            raise CacheCorrupt(f"{path}: {name} fails its checksum")
        return
    role = next(r for r in m["roles"] if r["file"] == name)
    arr = np.load(path / name, mmap_mode="r")
    for layer, want in enumerate(role["crc32"]):
        if zlib.crc32(np.ascontiguousarray(arr[layer]).data) != want:
            raise CacheCorrupt(f"{path}: layer {layer} {role['role'].upper()} ({role['form']}) fails its checksum")


def _space_error(root: Path, exc: OSError) -> CacheError:
    if exc.errno == errno.ENOSPC:
        why = "is full"
        todo = "free space, lower --cache-limit or pass another --cache-dir"
    elif exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        why = "is not writable"
        todo = "pass --cache-dir to a writable folder (or set AWMTRACE_CACHE)"
    else:
        why = f"cannot be written ({exc.strerror or exc})"
        todo = "pass another --cache-dir"
    return CacheError(f"cache folder {root} {why}; {todo}")


class ModelCache:
    """A folder of :class:`CacheEntry` (``entries/<key>``) plus an index from cheap file identities to content fingerprints."""

    def __init__(self, root: str | Path | None = None, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        # Absolute: workers (local processes, Ray tasks) may run in another directory.
        self.root = (Path(root).expanduser() if root is not None else default_cache_dir()).absolute()
        self.limit_bytes = int(limit_bytes)
        self.options = extraction_options()
        #: Weight reads made by :meth:`get` in this process (tests count them).
        self.builds = 0
        self.notes: list[str] = []

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    def _index_file(self, identity: str) -> Path:
        return self.root / "index" / (hashlib.sha256(identity.encode()).hexdigest()[:40] + ".json")

    def open(self, key: str) -> CacheEntry | None:
        """The entry ``key`` if it exists and passes its checks; a failing one is removed (and ``None`` returned)."""
        path = self.entries_dir / key
        if not path.is_dir():
            return None
        try:
            try:
                manifest = json.loads((path / _MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CacheCorrupt(f"{path}: manifest unreadable ({exc})") from None
            _check_manifest(path, manifest, key)
        except CacheCorrupt as exc:
            self.discard(path, str(exc))
            return None
        return CacheEntry(path=path, manifest=manifest)

    def discard(self, path: Path, why: str) -> None:
        self.notes.append(f"cache entry {path.name[:12]} rebuilt: {why}")
        log.warning("discarding cache entry %s: %s", path, why)
        shutil.rmtree(path, ignore_errors=True)

    def _indexed(self, path: str | Path) -> tuple[Path, str | None]:
        """The index file for the model at ``path`` (by its file identity) and the fingerprint it records, if any."""
        from awmtrace.store import model_fingerprint

        index = self._index_file(f"{model_fingerprint(path)}|{json.dumps(self.options, sort_keys=True)}")
        try:
            return index, str(json.loads(index.read_text(encoding="utf-8"))["content_fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            return index, None

    def lookup(self, path: str | Path) -> CacheEntry | None:
        """The valid entry of the local model at ``path`` found through the identity index alone (no weights opened), else ``None``."""
        fp = self._indexed(path)[1]
        entry = self.open(entry_key(fp, self.options)) if fp else None
        if entry is not None:
            entry.touch()
        return entry

    def get(self, model: Any, progress: Progress | None = None) -> CacheEntry:
        """The entry of an opened :class:`awmtrace.pipeline.Model`, built (reading its weights) when missing or invalid."""
        index, fp = self._indexed(model.source.path)
        entry = self.open(entry_key(fp, self.options)) if fp else None
        if entry is None:
            fp = content_fingerprint(model.source, tensors_read(model.view))
            entry = self.open(entry_key(fp, self.options)) or self._build(model, fp, progress)
            self._write(index, json.dumps({"content_fingerprint": fp, "spec": model.spec}).encode())
        entry.touch()
        return entry

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise _space_error(self.root, exc) from exc

    def _build(self, model: Any, fp: str, progress: Progress | None) -> CacheEntry:
        key = entry_key(fp, self.options)
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.entries_dir))
        except OSError as exc:
            raise _space_error(self.root, exc) from exc
        try:
            from awmtrace.collections.extract import write_entry

            manifest = write_entry(model, tmp, key, fp, self.options, progress)
            self.builds += 1
            final = self.entries_dir / key
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # another process renamed its copy in first: use that one
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _space_error(self.root, exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        del manifest
        entry = self.open(key)
        if entry is None:
            raise CacheError(f"cache entry {final} failed its checks right after it was written; the cache folder may be unreliable")
        return entry

    def entries(self, verify: bool = False) -> list[dict[str, Any]]:
        """Entries, most recently used first: key, spec, bytes, last use, and whether they pass their checks.

        ``verify``: checksum every file, not only those whose size or time changed.
        """
        out: list[dict[str, Any]] = []
        if not self.entries_dir.is_dir():
            return out
        for path in sorted(p for p in self.entries_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info: dict[str, Any] = {"key": path.name, "path": str(path), "bytes": _du(path), "last_used": _last_used(path)}
            try:
                m = json.loads((path / _MANIFEST).read_text(encoding="utf-8"))
                _check_manifest(path, m, path.name, verify=verify)
                info.update(spec=m.get("spec"), fingerprint=m.get("content_fingerprint"), valid=True, tool_version=m.get("tool_version"))
            except (OSError, ValueError, CacheCorrupt) as exc:
                info.update(spec=None, valid=False, problem=str(exc))
            out.append(info)
        out.sort(key=lambda d: d["last_used"], reverse=True)
        return out

    def total_bytes(self) -> int:
        return sum(d["bytes"] for d in self.entries())

    def evict(self, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove least recently used entries (never those in ``protect``) until the folder fits the limit; returns removed keys."""
        items = self.entries()
        total = sum(d["bytes"] for d in items)
        removed = []
        for d in sorted(items, key=lambda d: d["last_used"]):
            if total <= self.limit_bytes:
                break
            if d["key"] in protect:
                continue
            shutil.rmtree(d["path"], ignore_errors=True)
            total -= d["bytes"]
            removed.append(d["key"])
        if total > self.limit_bytes:
            self.notes.append(
                f"cache holds {total / 2**30:.2f} GiB, above its {self.limit_bytes / 2**30:.2f} GiB limit: "
                "the entries this run uses are kept"
            )
        return removed

    def clean(self, everything: bool = True) -> list[str]:
        """Remove entries (all, or only those failing their checks) and temporary leftovers; returns removed keys."""
        removed = []
        for d in self.entries():
            if everything or not d["valid"]:
                shutil.rmtree(d["path"], ignore_errors=True)
                removed.append(d["key"])
        if self.entries_dir.is_dir():
            for p in self.entries_dir.iterdir():
                if p.name.startswith("."):
                    shutil.rmtree(p, ignore_errors=True)
        if everything:
            shutil.rmtree(self.root / "index", ignore_errors=True)
        return removed


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _last_used(path: Path) -> float:
    try:
        return (path / _LAST_USED).stat().st_mtime
    except OSError:
        try:
            return path.stat().st_mtime
        except OSError:
            return time.time()
