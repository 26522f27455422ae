"""One pair from two cache entries: alignment, per-layer UCKA from packed Grams, layer matching, z/p/verdict.

The alignment is the pipeline's own (:func:`awmtrace.pipeline.align_models`)
run on the cached embeddings and vocabularies, so it follows the same rules
as ``awm compare``; the base's column cosines, computed once per model
(:func:`awmtrace.collections.extract.column_gram`), let it prove a related
pair's assignment without the full cosine matrix (:mod:`awmtrace.core.certify`).
The base (wider) model's Gram is aligned by gathering rows and columns
(rectangular when widths differ), the other model's by its signs (``D L D``),
which is what the pipeline's index-and-sign alignment of the samples does to
their Grams; the cross term comes from :func:`awmtrace.core.packed.gathered_cross`
and the self terms from the statistics stored with each Gram. Layers are
scored on a few threads (the array work releases the GIL). Scores equal
``awm compare``'s up to the bfloat16 rounding of the Grams.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from awmtrace._version import __version__
from awmtrace.collections.cache import CacheEntry
from awmtrace.collections.extract import column_cosines
from awmtrace.core import cka, stats
from awmtrace.core.align import match_layers
from awmtrace.core.backend import Backend, TorchBackend, select_backend
from awmtrace.core.cka import cka_from_terms
from awmtrace.core.cka import hsic_from_sums as _hsic
from awmtrace.core.packed import PackedGram, gathered_cross, pack_gram, packed_size, widen_bf16
from awmtrace.errors import VocabularyError
from awmtrace.io.base import RowReader, TensorSource
from awmtrace.types import Alignment, LayerScore, NullModel, PairResult

__all__ = ["cached_model", "align_entries", "score_pair", "default_threads"]

Progress = Callable[[str, int, int], None]


def default_threads() -> int:
    """Threads a pair uses by default: ``AWMTRACE_THREADS`` (a worker's share, set by the local engine), else every CPU."""
    from awmtrace.collections.engine import available_cpus

    share = os.environ.get("AWMTRACE_THREADS", "")
    return int(share) if share.isdigit() and int(share) > 0 else available_cpus()


class CachedSource(TensorSource):
    """The cached token embedding, served as a :class:`TensorSource` so that the pipeline's alignment reads it unchanged."""

    def __init__(self, entry: CacheEntry) -> None:
        self._entry = entry
        self.path = entry.path
        self.format = "awmtrace-cache"
        self.config = {}
        self.metadata = {}
        self._name = entry.manifest["view"]["embedding"]["name"]

    def names(self) -> list[str]:
        return [self._name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry.manifest["embedding"]["shape"])

    def dtype(self, name: str) -> str:
        return str(self._entry.manifest["embedding"]["dtype"])

    def read(self, name: str) -> np.ndarray:
        return self.row_reader(name).take(np.arange(self.shape(name)[0]))

    def row_reader(self, name: str) -> RowReader:
        return RowReader(self._entry.embedding(), self._entry.embedding_to_float32, f"{self.path}: cached embedding")


def cached_model(entry: CacheEntry, spec: str | None = None) -> Any:
    """A :class:`awmtrace.pipeline.Model` whose only tensor is the cached embedding (for the alignment), with its column-cosine bound."""
    from awmtrace.pipeline import Model

    err = entry.manifest["vocab"]["error"]
    vocab = entry.vocab()
    return Model(
        spec=spec or str(entry.manifest["spec"]),
        source=CachedSource(entry),
        view=entry.view(),
        vocab=vocab,
        vocab_error=VocabularyError(err) if err else None,
        column_cosines=lambda ids: column_cosines(entry, ids),
    )


def align_entries(a: Any, b: Any, align: str, min_shared_tokens: int, progress: Progress | None = None) -> Alignment:
    """The pipeline's alignment of two cached models (from :func:`cached_model`)."""
    from awmtrace.pipeline import align_models

    return align_models(a, b, align, min_shared_tokens, progress)


class _Side:
    """One model of a pair and how the alignment applies to it: the base is gathered (or rotated), the other signed."""

    def __init__(self, entry: CacheEntry, al: Alignment, is_base: bool) -> None:
        self.entry, self.is_base = entry, is_base
        n = entry.hidden_size
        rotation = getattr(al, "rotation", None)
        self.rotation = rotation if is_base else None
        gather = is_base and rotation is None and not (al.index.size == n and np.array_equal(al.index, np.arange(n)))
        self.index = al.index if gather else None
        self.permutation = self.index is None or al.index.size == n
        self.signs = al.signs if not is_base and rotation is None and al.n_sign_flips else None

    def gram(self, layer: int, role: int) -> PackedGram:
        """The stored packed Gram of ``(layer, role)`` (memory-mapped)."""
        info = self.entry.manifest["roles"][role]
        return PackedGram(self.entry.stored(layer, role), self.entry.hidden_size, int(info["block"]))

    def full_gram(self, layer: int, role: int) -> np.ndarray:
        """The stored Gram in full, float32, with its zero diagonal (as stored; not aligned)."""
        full = self.gram(layer, role).full()
        return widen_bf16(full, np.empty(full.shape, dtype=np.float32))

    def wide(self, layer: int, role: int) -> np.ndarray:
        """The stored matrix widened to float32, a Gram in full with its diagonal restored (what a rotation needs)."""
        if self.entry.form(role) != "gram":
            bits = self.entry.stored(layer, role)
            return widen_bf16(bits, np.empty(bits.shape, dtype=np.float32))
        out = self.full_gram(layer, role)
        out[np.diag_indices(out.shape[0])] = self.entry.stats(layer, role)[1]
        return out

    def samples(self, layer: int, role: int) -> np.ndarray:
        """Feature-form samples ``(n_other, d_out)`` float32, aligned as the pipeline aligns samples."""
        x = self.wide(layer, role)
        if self.rotation is not None:
            return np.asarray(self.rotation.T @ x, dtype=np.float32)
        if self.index is not None:
            return np.ascontiguousarray(x[self.index])
        if self.signs is not None:
            x *= self.signs[:, None]
        return x

    def packed(self, layer: int, role: int) -> tuple[PackedGram, np.ndarray, float, float]:
        """``(gram, rows, total, sumsq)`` of the Gram as stored, or packed from the samples when the role is stored as samples."""
        if self.entry.form(role) == "gram":
            rows, _, total, sumsq = self.entry.stats(layer, role)
            return self.gram(layer, role), rows, total, sumsq
        x = np.asfortranarray(self.wide(layer, role))
        n = x.shape[0]
        bits = np.empty(packed_size(n), dtype=np.uint16)
        st = pack_gram(cka._syrk_upper(x), bits)
        return PackedGram(bits, n), st.rows, st.total, st.sumsq


def _gram_row(base: _Side, other: _Side, i: int, js: list[int], role: int) -> list[float]:
    """UCKA of the Gram of base layer ``i`` with those of other layers ``js``; the base is read (and rebuilt) once."""
    if base.rotation is not None:
        return [_rotated_ucka(base, other, i, j, role) for j in js]
    kb, rows_stored, total_stored, sq_stored = base.packed(i, role)
    full = kb.full() if base.index is not None else None
    out = []
    for j in js:
        lo, rows_o, total_o, sq_o = other.packed(j, role)
        ct = gathered_cross(kb, lo, base.index, other.signs, base_stats=not base.permutation, base_full=full)
        rows_b, total_b, sq_b = rows_stored, total_stored, sq_stored
        if ct.base is not None:
            rows_b, total_b, sq_b = ct.base.rows, ct.base.total, ct.base.sumsq
        elif base.index is not None:
            rows_b = rows_b[base.index]
        if ct.other_rows is not None:
            rows_o, total_o = ct.other_rows, float(ct.other_rows.sum())
        n = lo.n
        hxy = _hsic(ct.trace, total_b, total_o, float(rows_b @ rows_o), n)
        out.append(
            cka_from_terms(
                hxy, _hsic(sq_b, total_b, total_b, float(rows_b @ rows_b), n), _hsic(sq_o, total_o, total_o, float(rows_o @ rows_o), n)
            )
        )
    return out


def _rotated_ucka(base: _Side, other: _Side, i: int, j: int, role: int) -> float:
    """An orthogonal alignment: ``R' (K~ + diag) R`` with its diagonal zeroed, against the other's Gram (float32, in full)."""
    assert base.rotation is not None
    if base.entry.form(role) == "gram":
        k = base.rotation.T @ base.wide(i, role) @ base.rotation
    else:
        x = base.samples(i, role)
        k = x @ x.T
    np.fill_diagonal(k, 0.0)
    tk = cka.terms_of_gram(k)
    tl = cka.terms_of_gram(other.full_gram(j, role)) if other.entry.form(role) == "gram" else cka.gram_terms(other.samples(j, role))
    return cka_from_terms(cka.hsic_from_gram_terms(tk, tl), tk.self_hsic, tl.self_hsic)


def _feature_ucka(base: _Side, other: _Side, i: int, j: int, role: int) -> float:
    """UCKA of two feature-form roles, in feature space; ``||X'X||`` from the cache where the alignment keeps it."""
    xb, xo = base.samples(i, role), other.samples(j, role)
    keeps = base.rotation is None and base.permutation
    tb = cka.feature_terms(xb, base.entry.stats(i, role)[0][0] if keeps else None)
    to = cka.feature_terms(xo, other.entry.stats(j, role)[0][0])
    return cka.cka_from_terms(cka.hsic_from_feature_terms(tb, to), tb.self_hsic, to.self_hsic)


def _ucka_row(base: _Side, other: _Side, i: int, js: list[int], role: int) -> list[float]:
    if base.entry.form(role) == other.entry.form(role) == "feature":
        return [_feature_ucka(base, other, i, j, role) for j in js]
    return _gram_row(base, other, i, js, role)


def _within_terms(side: _Side, layers: list[int]) -> list[cka.GramTerms]:
    """Gram terms of one side's scored matrices (Q, K of each matched layer, in order), aligned as they were scored.

    Signs and permutations change no similarity within one model; a rectangular gather does, so it is applied.
    """
    out = []
    for layer in layers:
        for role in (0, 1):
            if side.entry.form(role) != "gram":
                out.append(cka.gram_terms(side.samples(layer, role)))
                continue
            k = side.full_gram(layer, role)
            out.append(cka.terms_of_gram(k[np.ix_(side.index, side.index)] if side.index is not None else k))
    return out


def _exact_sd(ea: CacheEntry, eb: CacheEntry, al: Alignment, layers: list[LayerScore], n: int) -> tuple[float, str] | None:
    """The exact permutation sd from each model's within-model similarities (:func:`awmtrace.core.stats.permutation_sd`).

    ``None`` (keep the bound) for a rotation, or when one model's Grams would not fit the pipeline's memory limit.
    """
    from awmtrace.pipeline import EXACT_SD_MAX_BYTES

    if al.method == "orthogonal" or 2 * len(layers) * n * n * 4 > EXACT_SD_MAX_BYTES:
        return None
    base, other = _Side(ea if al.base == "a" else eb, al, True), _Side(eb if al.base == "a" else ea, al, False)
    side_a, side_b = (base, other) if al.base == "a" else (other, base)
    sim_a = cka.similarity_from_terms(_within_terms(side_a, [ls.index_a for ls in layers]))
    sim_b = cka.similarity_from_terms(_within_terms(side_b, [ls.index_b for ls in layers]))
    return stats.permutation_sd(n, sim_a, sim_b)


#: One backend per device in each process: a torch backend keeps the unpacking index of each Gram size.
_BACKENDS: dict[str, tuple[Backend, str | None]] = {}


def _backend(device: str, al: Alignment, notes: list[str]) -> Backend:
    """This process's backend for ``device``; what the result should say about it goes into ``notes``."""
    if device not in _BACKENDS:
        _BACKENDS[device] = select_backend(device)
    backend, note = _BACKENDS[device]
    notes.extend([note] if note else [])
    if isinstance(backend, TorchBackend) and al.method == "orthogonal":
        notes.append(f"a rotation is scored on the CPU path, not on {backend.name}")
    return backend


def _device_terms(side: _Side, layer: int, role: int, backend: TorchBackend) -> Any:
    """Gram terms of one side's aligned ``(layer, role)`` on the torch device: a stored Gram unpacked there, or samples' Gram."""
    if side.entry.form(role) == "gram":
        gram = side.gram(layer, role)
        return backend.packed_terms(gram.bits, gram.n, gram.block, index=side.index, signs=side.signs)
    return backend.gram_terms(side.samples(layer, role))


def _device_row(base: _Side, other: _Side, i: int, js: list[int], role: int, backend: TorchBackend) -> list[float]:
    """:func:`_ucka_row` on a torch device (``--device cuda``/``torch-cpu``): the base's terms are built once for every ``j``."""
    if base.entry.form(role) == other.entry.form(role) == "feature":
        return [backend.ucka(base.samples(i, role), other.samples(j, role)) for j in js]
    tb = _device_terms(base, i, role, backend)
    return [backend.cka_from_gram_terms(tb, _device_terms(other, j, role, backend)) for j in js]


def _layer_scores(
    ea: CacheEntry, eb: CacheEntry, al: Alignment, threads: int, backend: Backend | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(L_a, L_b)`` UCKA of Q and of K; only the diagonal when depths are equal (the rest is NaN).

    ``backend``: a torch backend scores there (not a rotation, which stays on the CPU path); otherwise numpy on threads.
    """
    la, lb = ea.n_layers, eb.n_layers
    base = _Side(ea if al.base == "a" else eb, al, True)
    other = _Side(eb if al.base == "a" else ea, al, False)
    lbase, lother = base.entry.n_layers, other.entry.n_layers
    out = np.full((2, lbase, lother), np.nan)
    js = [[i] if la == lb else list(range(lother)) for i in range(lbase)]
    if isinstance(backend, TorchBackend) and base.rotation is None:
        for i in range(lbase):
            for role in (0, 1):
                out[role, i, js[i]] = _device_row(base, other, i, js[i], role, backend)
            base.entry.release()
            other.entry.release()
        return (out[0], out[1]) if al.base == "a" else (out[0].T, out[1].T)
    # Packed Gram pairs are plain array passes that release the GIL: they run on threads. Anything that
    # calls BLAS (feature-form roles, Grams packed from samples, rotations) runs here, one at a time, with
    # BLAS's own threads: several threads calling BLAS at once make its thread pools fight.
    pooled_roles = {r for r in (0, 1) if base.rotation is None and base.entry.form(r) == other.entry.form(r) == "gram"}
    for role in {0, 1} - pooled_roles:
        for i in range(lbase):
            out[role, i, js[i]] = _ucka_row(base, other, i, js[i], role)
    pooled = [(i, role) for i in range(lbase) for role in sorted(pooled_roles)]

    def run(task: tuple[int, int]) -> list[float]:
        return _ucka_row(base, other, task[0], js[task[0]], task[1])

    chunk = 4 * max(1, threads)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(pooled), chunk):
            part = pooled[start : start + chunk]
            for (i, role), values in zip(part, pool.map(run, part), strict=True):
                out[role, i, js[i]] = values
            # Mapped pages count in this process's memory: drop those read so far (the page cache keeps them).
            base.entry.release()
            other.entry.release()
    sq, sk = out[0], out[1]
    if al.base == "b":
        sq, sk = sq.T, sk.T
    return sq, sk


def _matching(sq: np.ndarray, sk: np.ndarray) -> tuple[list[LayerScore], dict[str, Any]]:
    la, lb = sq.shape
    if la == lb:
        layers = [LayerScore(i, i, float(sq[i, i]), float(sk[i, i])) for i in range(la)]
        matching: dict[str, Any] = {"method": "identity", "n_layers_a": la, "n_layers_b": lb}
    else:
        full = (sq + sk) / 2.0
        a_shallow = la <= lb
        pairs = match_layers(full if a_shallow else full.T)
        layers = []
        for i, j in pairs:
            ia, ib = (i, j) if a_shallow else (j, i)
            layers.append(LayerScore(ia, ib, float(sq[ia, ib]), float(sk[ia, ib])))
        layers.sort(key=lambda s: s.index_a)
        matching = {"method": "lap", "n_layers_a": la, "n_layers_b": lb, "score_matrix": full.round(6).tolist()}
    matching["pairs"] = [[s.index_a, s.index_b] for s in layers]
    return layers, matching


def score_pair(  # noqa: PLR0913 - keyword options, as compare_models takes them
    ea: CacheEntry,
    eb: CacheEntry,
    *,
    spec_a: str | None = None,
    spec_b: str | None = None,
    align: str = "auto",
    null: NullModel | None = None,
    min_shared_tokens: int | None = None,
    z_related: float = stats.Z_RELATED,
    z_inconclusive: float = stats.Z_INCONCLUSIVE,
    threads: int | None = None,
    device: str = "cpu",
) -> PairResult:
    """Compare two cached models; the same :class:`PairResult` as :func:`awmtrace.pipeline.compare_models` gives.

    ``device``: where layers are scored (as ``awm compare --device``; a torch device unpacks the Grams there), not the alignment.
    """
    from awmtrace.nulls import load_null, null_record
    from awmtrace.pipeline import MIN_SHARED_TOKENS

    started = time.perf_counter()
    null_model = null if isinstance(null, NullModel) else load_null(null)
    ma, mb = cached_model(ea, spec_a), cached_model(eb, spec_b)
    al = align_entries(ma, mb, align, MIN_SHARED_TOKENS if min_shared_tokens is None else min_shared_tokens)
    notes: list[str] = []
    n_small = min(al.hidden_size_a, al.hidden_size_b)
    if al.n_shared_tokens < n_small:
        notes.append(f"only {al.n_shared_tokens} shared tokens for {n_small} hidden dimensions: the alignment may be unreliable")
    backend = _backend(device, al, notes)
    sq, sk = _layer_scores(ea, eb, al, default_threads() if threads is None else threads, backend)
    layers, matching = _matching(sq, sk)
    score_q = float(np.mean([s.score_q for s in layers]))
    score_k = float(np.mean([s.score_k for s in layers]))
    score = (score_q + score_k) / 2.0
    assessment = stats.assess(score, null_model, z_related, z_inconclusive, n_samples=n_small,
                              exact_sd=lambda: _exact_sd(ea, eb, al, layers, n_small))  # fmt: skip
    notes.extend(al.quality.get("notes", []))
    null_info, caveat = null_record(null_model, al.method)
    notes.extend([caveat] if caveat else [])
    notes.append("scored from cached bfloat16 Grams (awm matrix)")
    return PairResult(
        a=ma.summary(),
        b=mb.summary(),
        score=score,
        score_q=score_q,
        score_k=score_k,
        layers=tuple(layers),
        alignment=al.to_dict(),
        layer_matching=matching,
        z=assessment.z,
        p_value=assessment.p_value,
        p_empirical=assessment.p_empirical,
        verdict=assessment.verdict,
        null=null_info,
        device=backend.name,
        elapsed_s=time.perf_counter() - started,
        notes=tuple(notes),
        tool_version=__version__,
    )
