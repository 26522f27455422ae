"""The friendly layer: paths (or Hub ids) in, :class:`PairResult` out.

It opens both checkpoints lazily, aligns hidden dimensions on the shared
vocabulary, scores attention Q/K layer by layer (reading one layer at a time),
matches layers when depths differ, and turns the mean score into z, p and a
verdict. Every decision is recorded in the result.

Canonical form: every Q/K (and FFN up/gate) input is scored as
``W @ diag(gamma)`` with the gain of the norm that feeds it (the
architecture table says which), so a copy whose gains were folded into the
next linear layers, or whose per-channel scales moved between norm and
weights (AWQ, SmoothQuant), scores as the original does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace._version import __version__
from awmtrace.arch.resolve import resolve
from awmtrace.core import certify, cka, stats
from awmtrace.core.align import (
    ALIGN_MODES,
    AlignmentChoice,
    CosineAccumulator,
    choose_alignment,
    lap_quality,
    match_layers,
    settled_by_lap,
)
from awmtrace.core.backend import Backend, select_backend
from awmtrace.errors import (
    AwmError,
    InputNotFound,
    UsageError,
    VocabularyError,
)
from awmtrace.extract import AlignedReader, NormGains, attention_names
from awmtrace.io import TensorSource, hub, open_source
from awmtrace.io.vocab import TOKENIZER_FILES, Vocab, shared_tokens, vocab_for
from awmtrace.nulls import load_null, null_record
from awmtrace.types import (
    Alignment,
    FfnLayerScore,
    LayerScore,
    ModelView,
    NullModel,
    PairResult,
)

__all__ = [
    "CompareOptions",
    "Model",
    "open_model",
    "compare",
    "compare_models",
    "compare_many",
    "Progress",
    "MIN_SHARED_TOKENS",
    "WEIGHTS",
    "ALIGN_CHOICES",
]

log = logging.getLogger("awmtrace")

#: Fewest shared tokens accepted for the embedding alignment by default.
MIN_SHARED_TOKENS = 256
#: Weight kinds ``--weights`` accepts; ``up``/``gate`` are the FFN input projections.
WEIGHTS = ("q", "k", "up", "gate")
#: ``align`` values: how dimensions are aligned (``auto``, ``lap``, ``orthogonal``), or ``ids``
#: (token rows matched by id, dimensions as in ``auto``). ``vocab``, the spelling from before ``auto`` existed, means ``auto``.
ALIGN_CHOICES = ("auto", "lap", "orthogonal", "ids")
#: Rows of the shared vocabulary converted to float32 at a time.
EMBEDDING_BLOCK_ROWS = 4096

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work advances; ``stage`` is a short phrase."""


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass
class Model:
    """An opened checkpoint: its tensors, what they mean, and its vocabulary."""

    spec: str
    source: TensorSource
    view: ModelView
    vocab: Vocab | None
    vocab_error: AwmError | None = None
    notes: list[str] = field(default_factory=list)
    #: From a cache entry: given the embedding rows a pair shares, ``(hidden, hidden)`` |cos| between the embedding's
    #: columns over exactly those rows (:func:`awmtrace.core.certify.abs_cosines`), or ``None`` when too costly; lets
    #: :func:`align_models` prove a LAP without the full cosine matrix.
    column_cosines: Callable[[np.ndarray], np.ndarray | None] | None = None

    def summary(self) -> dict[str, Any]:
        d = self.view.summary()
        d["spec"] = self.spec
        return d

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tensors_read(view: ModelView, ffn: bool = False) -> list[str]:
    """The tensors a comparison reads from a model: the one list the Hub fetcher, fingerprints and caches use.

    Token embedding and each layer's Q and K (or fused QKV) with the norm gain
    feeding them where the view records one; with ``ffn`` the FFN input
    projections and their norm too.
    """
    names = [view.embedding.name]
    for layer in view.layers:
        names += [layer.q.name, layer.k.name]
        norms = [layer.attn_norm]
        if ffn:
            names += [r.name for r in (*layer.up, *layer.gate)]
            norms.append(layer.ffn_norm)
        names += [n.name for n in norms if n is not None]
    return list(dict.fromkeys(names))


def hub_tensors(source: TensorSource, ffn: bool) -> list[str]:
    """The Hub fetcher's selector: :func:`tensors_read` of the view a checkpoint's headers resolve to."""
    return tensors_read(resolve(source), ffn)


def _local_path(spec: str | Path, progress: Progress, ffn: bool = False) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if hub.looks_like_repo_id(text):
        return hub.ensure_local(text, progress=progress, ffn=ffn, select=hub_tensors)
    raise InputNotFound(f"{text}: no such file or directory, and not a Hugging Face repo id (org/name[@revision])")


def open_model(spec: str | Path, progress: Progress | None = None, *, ffn: bool = False) -> Model:
    """Open a checkpoint (directory, ``.safetensors``, ``.gguf``, ``.bin``, or Hub id) without reading weights.

    ``ffn`` matters only for Hub ids: it also fetches the FFN input projections.
    """
    path = _local_path(spec, progress or _no_progress, ffn)
    source = open_source(path)
    try:
        view = resolve(source)
        vocab: Vocab | None = None
        vocab_error: AwmError | None = None
        try:
            vocab = vocab_for(source)
        except VocabularyError as exc:
            vocab_error = exc
        view = replace(view, tokenizer_source=vocab.source if vocab is not None else None)
    except BaseException:
        source.close()
        raise
    return Model(spec=str(spec), source=source, view=view, vocab=vocab, vocab_error=vocab_error)


def _parse_align(align: str) -> tuple[str, str]:
    """``align`` option -> (how token rows are matched, dimension-alignment mode)."""
    align = "auto" if align == "vocab" else align  # the spelling before orthogonal alignment existed
    if align not in ALIGN_CHOICES:
        raise UsageError(f"align must be one of {', '.join(ALIGN_CHOICES)}, got {align!r}")
    if align == "ids":
        return "ids", "auto"
    assert align in ALIGN_MODES
    return "vocab", align


def _shared_ids(base: Model, other: Model, tokens: str, min_shared: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(ids_base, ids_other)`` of the shared tokens, matched by vocabulary (``tokens="vocab"``) or by id."""
    rows_b, rows_o = base.view.vocab_size, other.view.vocab_size
    if tokens == "ids":
        if rows_b != rows_o:
            raise UsageError(
                f"--align ids needs embeddings with the same number of rows; {base.spec} has {rows_b}, {other.spec} has {rows_o}"
            )
        ids = np.arange(rows_b, dtype=np.int64)
        return ids, ids
    for m in (base, other):
        if m.vocab_error is not None:
            raise m.vocab_error
        if m.vocab is None:
            hint = (
                f"; if both models use the same tokenizer, pass --align ids (both embeddings have {rows_b} rows)"
                if rows_b == rows_o
                else ""
            )
            raise VocabularyError(f"{m.spec}: no tokenizer found (looked for {', '.join(TOKENIZER_FILES)} or GGUF metadata){hint}")
    assert base.vocab is not None and other.vocab is not None
    ids_b, ids_o = shared_tokens(base.vocab, other.vocab, rows_b, rows_o)
    if ids_b.size < min_shared:
        where = f"between {base.spec} ({base.vocab.source}) and {other.spec} ({other.vocab.source})"
        if ids_b.size >= MIN_SHARED_TOKENS:
            # Enough for the default: the limit the user raised refused it, not the tokenizers.
            raise VocabularyError(
                f"{ids_b.size} tokens are shared {where}, fewer than the --min-shared-tokens limit of {min_shared} "
                f"(default {MIN_SHARED_TOKENS}); lower the limit to align on them"
            )
        raise VocabularyError(
            f"only {ids_b.size} tokens are shared {where}; at least {min_shared} are needed to align hidden dimensions. "
            "The models likely use unrelated tokenizers"
        )
    return ids_b, ids_o


def _stream_rows(
    base: Model, other: Model, ids_base: np.ndarray, ids_other: np.ndarray, acc: CosineAccumulator, progress: Progress
) -> tuple[float, float]:
    """Feed every shared row to ``acc`` a block at a time; returns (seconds reading, seconds accumulating)."""
    reader_base = base.source.row_reader(base.view.embedding.name)
    reader_other = other.source.row_reader(other.view.embedding.name)
    t_read = t_cost = 0.0
    total = ids_base.size
    try:
        for start in range(0, total, EMBEDDING_BLOCK_ROWS):
            stop = min(start + EMBEDDING_BLOCK_ROWS, total)
            t0 = time.perf_counter()
            rows_base, rows_other = reader_base.take(ids_base[start:stop]), reader_other.take(ids_other[start:stop])
            t1 = time.perf_counter()
            acc.add(rows_base, rows_other)
            t_read += t1 - t0
            t_cost += time.perf_counter() - t1
            progress("aligning embeddings", stop, total)
    finally:
        reader_base.close()
        reader_other.close()
    return t_read, t_cost


def _certified(
    base: Model, other: Model, ids_base: np.ndarray, ids_other: np.ndarray, mode: str, progress: Progress
) -> AlignmentChoice | None:
    """The LAP choice proven from a row sample and exact passes (:mod:`awmtrace.core.certify`), or ``None`` (then: the full path)."""
    total = ids_base.size
    n_base, n_other = base.view.hidden_size, other.view.hidden_size
    positions = np.unique(np.linspace(0, total - 1, min(total, certify.SAMPLE_ROWS)).round().astype(np.int64))
    rb = base.source.row_reader(base.view.embedding.name)
    ro = other.source.row_reader(other.view.embedding.name)
    try:
        index = certify.candidate(rb.take(ids_base[positions]), ro.take(ids_other[positions]))
    finally:
        rb.close()
        ro.close()
    if index is None or base.column_cosines is None:
        return None
    acc = certify.MatchedAccumulator(index, n_base, total)
    _stream_rows(base, other, ids_base, ids_other, acc, progress)
    matched = acc.matched()
    # The base's column cosines cost a pass over its embedding (once per model): only worth it when a proof can succeed.
    cosines = base.column_cosines(ids_base) if certify.may_certify(matched) else None
    if cosines is None:
        return None
    i, j = certify.suspects(matched, index, cosines)
    checked = None
    if i.size > certify.MAX_SUSPECTS_PER_DIM * n_other:
        return None
    if i.size:
        pairs = certify.PairAccumulator(i, j, n_base, n_other, total)
        _stream_rows(base, other, ids_base, ids_other, pairs, progress)
        checked = pairs.cosines()
    if not certify.certified(matched, index, cosines, checked):
        return None
    signs = np.where(matched < 0, -1.0, 1.0).astype(np.float32)
    lap = AlignmentChoice("lap", index, signs, matched, None, {"lap": lap_quality(matched, index, acc.stats())}, "")
    settled = settled_by_lap(lap, mode)
    if settled is None:
        return None
    note = (
        "LAP proven optimal from a row sample, the exact matched cosines and the base's column cosines"
        f" ({i.size} near-parallel pair(s) checked exactly); the full cosine matrix was not needed"
    )
    return replace(settled, notes=(*settled.notes, note))


def align_models(
    a: Model, b: Model, align: str = "auto", min_shared_tokens: int = MIN_SHARED_TOKENS, progress: Progress | None = None
) -> Alignment:
    """Match hidden dimensions of ``b`` to ``a`` (or ``a`` to ``b`` when ``b`` is wider).

    ``align``: ``auto`` (LAP unless the embeddings show a rotated copy, see
    :func:`awmtrace.core.align.choose_alignment`), ``lap``, ``orthogonal``, or
    ``ids`` (token rows matched by id, dimensions as in ``auto``). When the base
    carries its column cosines (cached models), a LAP proven optimal from them
    (:mod:`awmtrace.core.certify`) is found without the full cosine matrix, with
    the same result.
    """
    progress = progress or _no_progress
    tokens, mode = _parse_align(align)
    base_side = "a" if a.view.hidden_size >= b.view.hidden_size else "b"
    base, other = (a, b) if base_side == "a" else (b, a)
    ids_base, ids_other = _shared_ids(base, other, tokens, min_shared_tokens)
    started = time.perf_counter()
    # Both embeddings are read now; let the OS fetch the second (and then the
    # first layer, see below) while this process works on the first.
    other.source.prefetch([other.view.embedding.name])
    for m in (base, other):
        if m.view.layers:
            m.source.prefetch(attention_names(m, 0))
    choice = _certified(base, other, ids_base, ids_other, mode, progress) if mode != "orthogonal" and base.column_cosines else None
    t_read = t_cost = 0.0
    if choice is None:
        acc = CosineAccumulator(base.view.hidden_size, other.view.hidden_size, ids_base.size)
        t_read, t_cost = _stream_rows(base, other, ids_base, ids_other, acc, progress)
        base.source.release()
        other.source.release()
        progress("solving hidden-dimension assignment", 0, 1)
        choice = choose_alignment(acc, mode)
    progress("solving hidden-dimension assignment", 1, 1)
    t_choose = time.perf_counter() - started - t_read - t_cost
    log.debug(
        "alignment: %.2f s reading embedding rows, %.2f s cosine matrix, %.2f s assignment and decision (%s)",
        t_read,
        t_cost,
        t_choose,
        choice.method,
        extra={
            "timings": {
                "read embeddings": t_read,
                "cost matrix": t_cost,
                "assignment": t_choose - choice.decision_s,
                "alignment decision": choice.decision_s,
            }
        },
    )
    return Alignment(
        index=choice.index,
        signs=choice.signs,
        cosines=choice.matched,
        base=base_side,
        hidden_size_a=a.view.hidden_size,
        hidden_size_b=b.view.hidden_size,
        n_shared_tokens=int(ids_base.size),
        method=choice.method,
        tokens=tokens,
        rotation=choice.rotation,
        quality={**choice.quality, "notes": list(choice.notes)} if choice.notes else dict(choice.quality),
        reason=choice.reason,
        requested=align,
    )


def _score_same_depth(sides: AlignedReader, n_layers: int, backend: Backend, progress: Progress) -> list[LayerScore]:
    out: list[LayerScore] = []
    t_ucka = 0.0
    for i in range(n_layers):
        xq, xk = sides.samples("a", i)
        yq, yk = sides.samples("b", i)
        # Layer i+1 is read while this one is scored.
        sides.prefetch("a", i + 1)
        sides.prefetch("b", i + 1)
        t0 = time.perf_counter()
        out.append(LayerScore(i, i, backend.ucka(xq, yq), backend.ucka(xk, yk)))
        t_ucka += time.perf_counter() - t0
        progress("scoring layers", i + 1, n_layers)
    log.debug(
        "scored %d layers: %.2f s reading, %.2f s UCKA",
        n_layers,
        sides.read_s,
        t_ucka,
        extra={"timings": {"read layers": sides.read_s, "ucka": t_ucka}},
    )
    return out


def _score_matched(sides: AlignedReader, la: int, lb: int, backend: Backend, progress: Progress) -> tuple[list[LayerScore], np.ndarray]:
    """All ``la x lb`` layer pairs in Gram space, the shallower model's terms held in memory."""
    a_shallow = la <= lb
    shallow, deep = ("a", "b") if a_shallow else ("b", "a")
    n_shallow, n_deep = min(la, lb), max(la, lb)

    held = []
    for i in range(n_shallow):
        xq, xk = sides.samples(shallow, i)
        if i + 1 < n_shallow:
            sides.prefetch(shallow, i + 1)
        else:
            sides.prefetch(deep, 0)
        held.append((backend.gram_terms(xq), backend.gram_terms(xk)))
        progress("scoring layers", i + 1, n_shallow + n_deep)
    score_q = np.zeros((n_shallow, n_deep))
    score_k = np.zeros((n_shallow, n_deep))
    for j in range(n_deep):
        xq, xk = sides.samples(deep, j)
        sides.prefetch(deep, j + 1)
        tq, tk = backend.gram_terms(xq), backend.gram_terms(xk)
        for i, (hq, hk) in enumerate(held):
            score_q[i, j] = backend.cka_from_gram_terms(hq, tq)
            score_k[i, j] = backend.cka_from_gram_terms(hk, tk)
        progress("scoring layers", n_shallow + j + 1, n_shallow + n_deep)
    del held
    full = (score_q + score_k) / 2.0
    layers = []
    for i, j in match_layers(full):
        ia, ib = (i, j) if a_shallow else (j, i)
        layers.append(LayerScore(ia, ib, float(score_q[i, j]), float(score_k[i, j])))
    layers.sort(key=lambda s: s.index_a)
    return layers, (full if a_shallow else full.T)


def _score_ffn(
    sides: AlignedReader, layers: Sequence[LayerScore], weights: Sequence[str], backend: Backend, progress: Progress
) -> dict[str, Any]:
    """FFN up/gate scores of the matched layers (best expert pair for MoE), gains of the FFN norm folded."""
    a, b = sides.a, sides.b
    results: list[FfnLayerScore] = []
    total = len(layers) * len(weights)
    done = 0
    for weight in weights:
        for ls in layers:
            refs_a = a.view.layers[ls.index_a].up if weight == "up" else a.view.layers[ls.index_a].gate
            refs_b = b.view.layers[ls.index_b].up if weight == "up" else b.view.layers[ls.index_b].gate
            done += 1
            if not refs_a or not refs_b:
                progress(f"scoring FFN {weight}", done, total)
                continue
            terms = {}
            for side in ("a", "b"):
                index = ls.index_a if side == "a" else ls.index_b
                terms[side] = [(expert, backend.gram_terms(x)) for expert, x in sides.ffn_samples(side, index, weight)]
            best: tuple[float, int | None, int | None] | None = None
            for ea, ta in terms["a"]:
                for eb, tb in terms["b"]:
                    s = backend.cka_from_gram_terms(ta, tb)
                    if best is None or s > best[0]:
                        best = (s, ea, eb)
            assert best is not None
            results.append(FfnLayerScore(weight, ls.index_a, ls.index_b, best[0], best[1], best[2]))
            progress(f"scoring FFN {weight}", done, total)
    summary: dict[str, Any] = {"weights": list(weights), "layers": [r.to_dict() for r in results]}
    for weight in weights:
        vals = [r.score for r in results if r.weight == weight]
        summary[f"score_{weight}"] = float(np.mean(vals)) if vals else None
        summary[f"n_layers_{weight}"] = len(vals)
    summary["note"] = "FFN scores are reported apart from the attention score and never enter it"
    return summary


def _parse_weights(weights: str | Iterable[str]) -> tuple[str, ...]:
    items = [w.strip().lower() for w in (weights.split(",") if isinstance(weights, str) else weights) if w.strip()]
    bad = [w for w in items if w not in WEIGHTS]
    if bad:
        raise UsageError(f"unknown weight kind(s) {', '.join(bad)}; choose from {', '.join(WEIGHTS)}")
    if not {"q", "k"} <= set(items):
        raise UsageError("--weights must include q and k (the AWM score is their mean); add up and/or gate for FFN scores")
    return tuple(dict.fromkeys(items))


def parse_weights(weights: str | Iterable[str]) -> tuple[str, ...]:
    """The weight kinds ``weights`` names (``"q,k,up"`` or an iterable), checked: q and k always, up/gate optional."""
    return _parse_weights(weights)


def wants_ffn(weights: str | Iterable[str]) -> bool:
    """Whether ``weights`` (as ``--weights`` takes it) asks for FFN scores, i.e. FFN tensors must be read."""
    return bool({"up", "gate"} & set(_parse_weights(weights))) if weights else False


@dataclass(frozen=True)
class CompareOptions:
    """Every option of a comparison, used by :func:`compare`, the suites and the CLI alike.

    ``weights``: kinds to score (``"q,k"`` or an iterable; add ``up``/``gate``
    for FFN scores); ``align``: one of :data:`ALIGN_CHOICES`; ``device``:
    ``auto``/``cpu``/``cuda``; ``null``: a :class:`NullModel`, a name or a
    file (``None``: the default null); ``z_*``: the verdict thresholds (see
    :mod:`awmtrace.core.stats`); ``fold_norms``: score ``W @ diag(gamma)``.
    Build it with :meth:`from_kwargs` (or call :meth:`validated`) to check the values.
    """

    weights: str | Iterable[str] = ("q", "k")
    align: str = "auto"
    min_shared_tokens: int = MIN_SHARED_TOKENS
    device: str = "auto"
    null: NullModel | str | Path | None = None
    z_related: float = stats.Z_RELATED
    z_inconclusive: float = stats.Z_INCONCLUSIVE
    z_permutation: float = stats.Z_PERMUTATION
    fold_norms: bool = True

    @classmethod
    def from_kwargs(cls, base: CompareOptions | None = None, **kwargs: Any) -> CompareOptions:
        """Options from keyword arguments (the names of the fields), over ``base`` (default: the defaults), validated."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown comparison option(s) {', '.join(unknown)}; the options are {', '.join(sorted(names))}")
        start = base if base is not None else cls()
        return replace(start, **kwargs).validated()

    def validated(self) -> CompareOptions:
        """These options with ``weights`` as a checked tuple and ``align`` checked; raises :class:`UsageError`."""
        kinds = _parse_weights(self.weights)
        _parse_align(self.align)
        return self if kinds == self.weights else replace(self, weights=kinds)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The weight kinds, checked (``("q", "k")`` and optionally ``"up"``/``"gate"``)."""
        return _parse_weights(self.weights)


def _options(options: CompareOptions | None, kwargs: dict[str, Any]) -> CompareOptions:
    """``options`` (or the defaults) with the keyword options over them, validated."""
    if options is not None and not isinstance(options, CompareOptions):
        raise UsageError(f"options must be a CompareOptions, got {type(options).__name__}; pass single options as keywords")
    if options is not None and not kwargs:
        return options.validated()
    return CompareOptions.from_kwargs(options, **kwargs)


def compare_models(
    a: Model, b: Model, options: CompareOptions | None = None, *, progress: Progress | None = None, **kwargs: Any
) -> PairResult:
    """Compare two opened models with ``options`` (a :class:`CompareOptions`), or single options as keywords. See :func:`compare`."""
    opts = _options(options, kwargs)
    progress = progress or _no_progress
    started = time.perf_counter()
    kinds = opts.kinds
    fold_norms = opts.fold_norms
    null_model = opts.null if isinstance(opts.null, NullModel) else load_null(opts.null)
    backend, device_note = select_backend(opts.device)
    notes: list[str] = [device_note] if device_note else []
    al = align_models(a, b, opts.align, opts.min_shared_tokens, progress)
    n_small = min(al.hidden_size_a, al.hidden_size_b)
    if al.n_shared_tokens < n_small:
        notes.append(f"only {al.n_shared_tokens} shared tokens for {n_small} hidden dimensions: the alignment may be unreliable")
    notes.extend(al.quality.get("notes", []))
    null_info, caveat = null_record(null_model, al.method)
    notes.extend([caveat] if caveat else [])
    sides = AlignedReader(a, b, al, fold_norms)
    la, lb = a.view.n_layers, b.view.n_layers
    if la == lb:
        layers = _score_same_depth(sides, la, backend, progress)
        matching: dict[str, Any] = {"method": "identity", "n_layers_a": la, "n_layers_b": lb}
    else:
        layers, full = _score_matched(sides, la, lb, backend, progress)
        matching = {"method": "lap", "n_layers_a": la, "n_layers_b": lb, "score_matrix": full.round(6).tolist()}
    matching["pairs"] = [[s.index_a, s.index_b] for s in layers]
    ffn_kinds = [w for w in kinds if w in ("up", "gate")]
    ffn = _score_ffn(sides, layers, ffn_kinds, backend, progress) if ffn_kinds else None
    summaries = {side: _model_record(side, model, sides.gains[side], fold_norms, notes) for side, model in (("a", a), ("b", b))}
    score_q = float(np.mean([s.score_q for s in layers]))
    score_k = float(np.mean([s.score_k for s in layers]))
    score = (score_q + score_k) / 2.0
    assessment = _assess(sides, layers, score, null_model, (opts.z_related, opts.z_inconclusive, opts.z_permutation), progress)
    all_notes = notes
    return PairResult(
        a=summaries["a"],
        b=summaries["b"],
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
        ffn=ffn,
        device=backend.name,
        elapsed_s=time.perf_counter() - started,
        notes=tuple(dict.fromkeys(all_notes)),  # the models' own notes are in a["notes"], b["notes"]
        tool_version=__version__,
    )


#: Most float32 Gram memory the exact permutation sd may hold (all matrices of one model at once).
EXACT_SD_MAX_BYTES = 1 << 30


def _assess(
    sides: AlignedReader,
    layers: Sequence[LayerScore],
    score: float,
    null: NullModel,
    thresholds: tuple[float, float, float],
    progress: Progress,
) -> stats.Assessment:
    """:func:`stats.assess` of the mean score, with the exact permutation sd where it can change the verdict.

    ``thresholds``: ``(z_related, z_inconclusive, z_permutation)``. Every
    aligned sample matrix has ``min(hidden_a, hidden_b)`` rows (samples).
    """
    z_related, z_inconclusive, z_permutation = thresholds
    n = min(sides.al.hidden_size_a, sides.al.hidden_size_b)
    return stats.assess(score, null, z_related, z_inconclusive, n_samples=n, z_permutation=z_permutation,
                        exact_sd=lambda: _exact_permutation_sd(sides, layers, n, progress))  # fmt: skip


def _exact_permutation_sd(sides: AlignedReader, layers: Sequence[LayerScore], n: int, progress: Progress) -> tuple[float, str] | None:
    """Exact sd of the mean score under one common permutation, from a second read of the matched layers.

    With the default thresholds this is needed only below ~800 hidden
    dimensions, where the reads and ``(2L)^2`` Gram products are cheap.
    ``None`` (keep the bound) when one model's Grams would not fit
    :data:`EXACT_SD_MAX_BYTES`.
    """
    if 2 * len(layers) * n * n * 4 > EXACT_SD_MAX_BYTES:
        return None
    sims = []
    for side in ("a", "b"):

        def matrices(side: str = side) -> Iterator[np.ndarray]:
            # Order q0, k0, q1, k1, ... on both sides (any order the two sides share gives the mean's variance).
            for j, ls in enumerate(layers):
                # Each sample matrix is turned into its Gram before samples() reuses the buffer.
                yield from sides.samples(side, ls.index_a if side == "a" else ls.index_b)
                progress("permutation check", j + 1, len(layers))

        sims.append(cka.similarity_matrix(matrices()))
    return stats.permutation_sd(n, sims[0], sims[1])


def _model_record(side: str, model: Model, gains: NormGains, fold_norms: bool, notes: list[str]) -> dict[str, Any]:
    """The model's summary for the result, with its ``norms`` record; appends the norm notes to ``notes``."""
    record = gains.record()
    notes.extend(_norm_notes(side, model, record, fold_norms))
    return {**model.summary(), "norms": record}


def _norm_notes(side: str, model: Model, record: dict[str, Any], fold_norms: bool) -> list[str]:
    """Notes for the result: gains not folded (off, or tensors missing) and zero gain entries."""
    label = side.upper()
    if not fold_norms:
        return [f"{label}: norm gains not folded (fold_norms=False); Q/K scored as stored"]
    notes = []
    if record["missing_layers"]:
        notes.append(
            f"{label}: no {record['kind']} norm weight found for {len(record['missing_layers'])} of {model.view.n_layers} layer(s); "
            "their Q/K are scored unfolded (gain 1)"
        )
    for name, zeros in record["zero_gain_entries"].items():
        notes.append(
            f"{label}: {zeros} zero gain(s) in {name}: those hidden dimensions are switched off for the layer's input and fold to zero"
        )
    return notes


def compare(
    a: str | Path, b: str | Path, options: CompareOptions | None = None, *, progress: Progress | None = None, **kwargs: Any
) -> PairResult:
    """Compare checkpoint ``a`` (the candidate base) with ``b`` (the suspect).

    ``a``/``b``: a model directory, a ``.safetensors``/``.gguf``/``.bin`` file,
    or a Hub id ``org/name[@revision]``. ``options``: a :class:`CompareOptions`;
    single options may be given as keywords instead (or over it): ``weights`` (``"q,k"``; add
    ``up``/``gate`` for FFN scores), ``align`` (``"auto"``, ``"lap"``,
    ``"orthogonal"`` or ``"ids"``; see :func:`align_models`),
    ``device`` (``auto``/``cpu``/``cuda``), ``null`` (name or file),
    ``min_shared_tokens``, ``z_related``, ``z_inconclusive``,
    ``z_permutation`` (the size-aware check, see :mod:`awmtrace.core.stats`),
    ``fold_norms`` (default ``True``: score ``W @ diag(gamma)`` with the gain
    of the norm feeding each Q/K and FFN input; ``False`` scores weights as stored).
    ``progress(stage, done, total)`` is called as work advances.
    """
    opts = _options(options, kwargs)
    ffn = wants_ffn(opts.kinds)
    with open_model(a, progress, ffn=ffn) as ma, open_model(b, progress, ffn=ffn) as mb:
        return compare_models(ma, mb, opts, progress=progress)


def compare_many(
    pairs: Iterable[tuple[str | Path, str | Path]],
    options: CompareOptions | None = None,
    *,
    progress: Progress | None = None,
    **kwargs: Any,
) -> list[PairResult]:
    """Compare several pairs (options as :func:`compare` takes them), opening each distinct model once."""
    pairs = list(pairs)
    opts = _options(options, kwargs)
    opened: dict[str, Model] = {}
    try:
        results = []
        for a, b in pairs:
            for spec in (a, b):
                if str(spec) not in opened:
                    opened[str(spec)] = open_model(spec, progress, ffn=wants_ffn(opts.kinds))
            results.append(compare_models(opened[str(a)], opened[str(b)], opts, progress=progress))
        return results
    finally:
        for m in opened.values():
            m.close()
