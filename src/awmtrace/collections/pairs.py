"""One pair from two cache entries: alignment, aligned Grams, per-layer UCKA, layer matching, z/p/verdict.

The alignment is the pipeline's own (:func:`awmtrace.pipeline.align_models`)
run on the cached embeddings and vocabularies, so it follows the same rules
as ``awm compare``. The base (wider) model's Gram is aligned by gathering
rows and columns (``K[idx][:, idx]``, rectangular when widths differ), the
other model's by its signs (``D L D``), which is what the pipeline's
index-and-sign alignment of the samples does to their Grams. UCKA is then
the unbiased HSIC of Song et al. (2012) from these matrices; scores equal
``awm compare``'s up to the rounding of the float16 Grams.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.blas import sgemv

from awmtrace._version import __version__
from awmtrace.collections.cache import CachedSource, CacheEntry
from awmtrace.core import cka, stats
from awmtrace.core.align import match_layers
from awmtrace.core.cka import cka_from_terms
from awmtrace.core.cka import hsic_from_sums as _hsic
from awmtrace.errors import VocabularyError
from awmtrace.types import Alignment, LayerScore, NullModel, PairResult

__all__ = ["cached_model", "align_entries", "align_gram", "assess", "score_pair"]

Progress = Callable[[str, int, int], None]


def cached_model(entry: CacheEntry, spec: str | None = None) -> Any:
    """A :class:`awmtrace.pipeline.Model` whose only tensor is the cached embedding (for the alignment)."""
    from awmtrace.pipeline import Model

    err = entry.manifest["vocab"]["error"]
    return Model(
        spec=spec or str(entry.manifest["spec"]),
        source=CachedSource(entry),
        view=entry.view(),
        vocab=entry.vocab(),
        vocab_error=VocabularyError(err) if err else None,
    )


def align_entries(a: Any, b: Any, align: str, min_shared_tokens: int, progress: Progress | None = None) -> Alignment:
    """The pipeline's alignment of two cached models (from :func:`cached_model`)."""
    from awmtrace.pipeline import align_models

    return align_models(a, b, align, min_shared_tokens, progress)


@dataclass
class AlignedGram:
    """A Gram after alignment, float32 ``(n_other, n_other)`` zero diagonal, with its HSIC terms.

    ``signs``: the other model's signs ``(n_other,)`` when they are still to be
    applied (``None`` when already applied or all +1); ``rows``: ``(n_other,)``
    float64 row sums of the signed matrix.
    """

    gram: np.ndarray
    rows: np.ndarray
    total: float
    sumsq: float
    signs: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.gram.shape[0])

    def self_hsic(self) -> float:
        return _hsic(self.sumsq, self.total, self.total, float(self.rows @ self.rows), self.n)


def _matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``a @ v`` for C-ordered float32 ``a`` ``(m, n)`` by scipy's SGEMV on the transposed view (no copy).

    scipy's BLAS, as :mod:`awmtrace.core.cka` uses: numpy and scipy each bundle an OpenBLAS with its
    own thread pool, and alternating between them leaves one pool spinning while the other works.
    """
    return np.asarray(sgemv(1.0, a.T, np.asarray(v, dtype=np.float32), trans=1))


def _full_stats(k: np.ndarray) -> tuple[np.ndarray, float, float]:
    rows = k.sum(axis=1, dtype=np.float64)
    return rows, float(rows.sum()), float(np.einsum("ij,ij->i", k, k).sum(dtype=np.float64))


def align_gram(entry: CacheEntry, layer: int, role: int, al: Alignment, is_base: bool) -> AlignedGram:
    """Gram ``(layer, role)`` of ``entry`` as the aligned samples of a pair would give it.

    Base side: rows/columns gathered by ``al.index`` (``K[idx][:, idx]``), or,
    when the alignment carries an orthogonal ``rotation`` ``(n_base, n_other)``,
    ``R' (K~ + diag) R`` with its diagonal zeroed. Other side: unchanged, its
    signs ``s`` applied as ``D L D`` (row sums and total here; the cross term
    in :func:`hsic_pair`).
    """
    g16 = entry.stored(layer, role)
    rows, diag, total, sumsq = entry.stats(layer, role)
    rotation = getattr(al, "rotation", None)
    if is_base and rotation is not None:
        full = g16.astype(np.float32)
        full[np.diag_indices_from(full)] = diag.astype(np.float32)
        k = rotation.T @ full @ rotation
        np.fill_diagonal(k, 0.0)
        return AlignedGram(k, *_full_stats(k), signs=None)
    if is_base:
        n_base = g16.shape[0]
        if al.index.size == n_base and np.array_equal(al.index, np.arange(n_base)):
            return AlignedGram(g16.astype(np.float32), rows, total, sumsq, None)
        bits = g16.view(np.uint16)
        # Gather the 2-byte values, then widen: half the bytes moved.
        k = np.take(np.take(bits, al.index, axis=0), al.index, axis=1).view(np.float16).astype(np.float32)
        if al.index.size == n_base:  # a permutation: row sums permute, the rest stays
            return AlignedGram(k, rows[al.index], total, sumsq, None)
        return AlignedGram(k, *_full_stats(k), signs=None)
    k = g16.astype(np.float32)
    if getattr(al, "rotation", None) is not None or al.n_sign_flips == 0:
        return AlignedGram(k, rows, total, sumsq, None)
    s = al.signs.astype(np.float32)
    ls = _matvec(k, s).astype(np.float64)  # L~ s
    return AlignedGram(k, s.astype(np.float64) * ls, float(s @ ls), sumsq, signs=s)


def aligned_samples(entry: CacheEntry, layer: int, role: int, al: Alignment, is_base: bool) -> np.ndarray:
    """Stored samples ``(n, p)`` of a feature-form role, aligned as the pipeline aligns samples: ``(n_other, p)`` float32."""
    x16 = entry.stored(layer, role)
    rotation = getattr(al, "rotation", None)
    if is_base:
        if rotation is not None:
            return np.asarray(rotation.T @ x16.astype(np.float32), dtype=np.float32)
        if al.index.size == x16.shape[0] and np.array_equal(al.index, np.arange(x16.shape[0])):
            return x16.astype(np.float32)
        return np.take(x16, al.index, axis=0).astype(np.float32)
    x = x16.astype(np.float32)
    if rotation is None and al.n_sign_flips:
        x *= al.signs[:, None]
    return x


def _feature_terms(x: np.ndarray, xtx_sq: float | None) -> cka.FeatureTerms:
    """:func:`awmtrace.core.cka.feature_terms` of ``x`` ``(n, p)``, taking ``||X'X||_F^2`` from the cache when given."""
    if xtx_sq is None:
        return cka.feature_terms(x)
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    cols = x.sum(axis=0, dtype=np.float64)
    rows = _matvec(x, cols.astype(np.float32)).astype(np.float64) - sq
    total = float(cols @ cols - sq.sum())
    self_hsic = _hsic(xtx_sq - float(sq @ sq), total, total, float(rows @ rows), n)
    return cka.FeatureTerms(x=x, sq_norms=sq, row_sums=rows, total=total, self_hsic=self_hsic)


def _gram_of(x: np.ndarray) -> AlignedGram:
    k = x @ x.T
    np.fill_diagonal(k, 0.0)
    return AlignedGram(k, *_full_stats(k), signs=None)


def _terms(entry: CacheEntry, layer: int, role: int, al: Alignment, is_base: bool, mode: str) -> Any:
    """Feature terms (``mode == "feature"``, both sides stored as samples) or an :class:`AlignedGram`."""
    if mode == "feature":
        # A row permutation with signs keeps ||X'X||; a rectangular gather or a rotation does not.
        n_rows = entry.stored(layer, role).shape[0]
        keeps = getattr(al, "rotation", None) is None and (not is_base or al.index.size == n_rows)
        return _feature_terms(aligned_samples(entry, layer, role, al, is_base), entry.stats(layer, role)[0][0] if keeps else None)
    if entry.form(role) == "feature":
        return _gram_of(aligned_samples(entry, layer, role, al, is_base))
    return align_gram(entry, layer, role, al, is_base)


def _ucka(tb: Any, to: Any, mode: str, scratch: np.ndarray | None) -> float:
    if mode == "feature":
        return cka.cka_from_terms(cka.hsic_from_feature_terms(tb, to), tb.self_hsic, to.self_hsic)
    return hsic_pair(tb, to, scratch)


def hsic_pair(base: AlignedGram, other: AlignedGram, scratch: np.ndarray | None = None) -> float:
    """UCKA of two aligned Grams (same n)."""
    if base.n != other.n:
        raise ValueError(f"aligned Grams differ in size: {base.n} vs {other.n}")
    if other.signs is None:
        tr = float(np.einsum("ij,ij->i", base.gram, other.gram).sum(dtype=np.float64))
    else:
        m = np.multiply(base.gram, other.gram, out=scratch)
        tr = float(other.signs.astype(np.float64) @ _matvec(m, other.signs).astype(np.float64))
    hxy = _hsic(tr, base.total, other.total, float(base.rows @ other.rows), base.n)
    return cka_from_terms(hxy, base.self_hsic(), other.self_hsic())


def assess(score: float, null_model: NullModel, z_related: float, z_inconclusive: float, n_samples: int) -> stats.Assessment:
    """z, p-values, the size-aware permutation check and the verdict: :func:`awmtrace.core.stats.assess`, as ``compare`` uses it.

    The permutation sd is the one-matrix bound (the exact sd would need each model's layer-to-layer
    similarities); a bound can only make the check stricter, never call an extra pair related.
    """
    return stats.assess(score, null_model, z_related, z_inconclusive, n_samples=n_samples)


def _layer_scores(ea: CacheEntry, eb: CacheEntry, al: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """``(L_a, L_b)`` UCKA of Q and of K; only the diagonal when depths are equal (the rest is NaN)."""
    la, lb = ea.n_layers, eb.n_layers
    base, other = (ea, eb) if al.base == "a" else (eb, ea)
    lbase, lother = (la, lb) if al.base == "a" else (lb, la)
    sq = np.full((lbase, lother), np.nan)
    sk = np.full((lbase, lother), np.nan)
    scratch: np.ndarray | None = None
    modes = ["feature" if base.form(r) == other.form(r) == "feature" else "gram" for r in (0, 1)]
    for i in range(lbase):
        targets = [i] if la == lb else range(lother)
        for role, out in ((0, sq), (1, sk)):
            tb = _terms(base, i, role, al, True, modes[role])
            if modes[role] == "gram" and (scratch is None or scratch.shape != tb.gram.shape):
                scratch = np.empty_like(tb.gram)
            for j in targets:
                out[i, j] = _ucka(tb, _terms(other, j, role, al, False, modes[role]), modes[role], scratch)
        base.release()
        other.release()
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
) -> PairResult:
    """Compare two cached models; the same :class:`PairResult` as :func:`awmtrace.pipeline.compare_models` gives."""
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
    sq, sk = _layer_scores(ea, eb, al)
    layers, matching = _matching(sq, sk)
    score_q = float(np.mean([s.score_q for s in layers]))
    score_k = float(np.mean([s.score_k for s in layers]))
    score = (score_q + score_k) / 2.0
    assessment = assess(score, null_model, z_related, z_inconclusive, n_small)
    notes.extend(al.quality.get("notes", []))
    null_info, caveat = null_record(null_model, al.method)
    notes.extend([caveat] if caveat else [])
    notes.append("scored from cached float16 Grams (awm matrix)")
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
        device="cpu",
        elapsed_s=time.perf_counter() - started,
        notes=tuple(notes),
        tool_version=__version__,
    )
