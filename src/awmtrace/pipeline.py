"""The friendly layer: paths (or Hub ids) in, :class:`PairResult` out.

It opens both checkpoints lazily, aligns hidden dimensions on the shared
vocabulary, scores attention Q/K layer by layer (reading one layer at a time),
matches layers when depths differ, and turns the mean score into z, p and a
verdict. Every decision is recorded in the result.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace import __version__
from awmtrace.arch.resolve import read_attention, read_ffn, resolve
from awmtrace.core import stats
from awmtrace.core.align import ALIGN_MODES, CosineAccumulator, choose_alignment, match_layers
from awmtrace.core.backend import Backend, select_backend
from awmtrace.errors import (
    AwmError,
    InputNotFound,
    NumericalError,
    UsageError,
    VocabularyError,
)
from awmtrace.io import TensorSource, open_source
from awmtrace.io.base import RawBuffer, RawLayout
from awmtrace.io.vocab import TOKENIZER_FILES, Vocab, shared_tokens, vocab_for
from awmtrace.nulls import alignment_caveat, load_null, null_covers_alignment
from awmtrace.types import (
    Alignment,
    FfnLayerScore,
    LayerScore,
    ModelView,
    NullModel,
    PairResult,
)

__all__ = [
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

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

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


def looks_like_repo_id(spec: str) -> bool:
    """``org/name`` or ``org/name@revision`` that is not an existing local path."""
    return bool(_REPO_ID.match(spec)) and not Path(spec).exists()


def _local_path(spec: str | Path, progress: Progress, ffn: bool = False) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if looks_like_repo_id(text):
        from awmtrace.io import hub

        return hub.ensure_local(text, progress=progress, ffn=ffn)
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


def align_models(
    a: Model, b: Model, align: str = "auto", min_shared_tokens: int = MIN_SHARED_TOKENS, progress: Progress | None = None
) -> Alignment:
    """Match hidden dimensions of ``b`` to ``a`` (or ``a`` to ``b`` when ``b`` is wider).

    ``align``: ``auto`` (LAP unless the embeddings show a rotated copy, see
    :func:`awmtrace.core.align.choose_alignment`), ``lap``, ``orthogonal``, or
    ``ids`` (token rows matched by id, dimensions as in ``auto``).
    """
    progress = progress or _no_progress
    tokens, mode = _parse_align(align)
    base_side = "a" if a.view.hidden_size >= b.view.hidden_size else "b"
    base, other = (a, b) if base_side == "a" else (b, a)
    ids_base, ids_other = _shared_ids(base, other, tokens, min_shared_tokens)
    started = time.perf_counter()
    total = ids_base.size
    acc = CosineAccumulator(base.view.hidden_size, other.view.hidden_size, total)
    # Both embeddings are read now; let the OS fetch the second (and then the
    # first layer, see below) while this process works on the first.
    other.source.prefetch([other.view.embedding.name])
    reader_base = base.source.row_reader(base.view.embedding.name)
    reader_other = other.source.row_reader(other.view.embedding.name)
    for m in (base, other):
        if m.view.layers:
            m.source.prefetch(_attention_names(m, 0))
    t_read = time.perf_counter() - started
    t_cost = 0.0
    for start in range(0, total, EMBEDDING_BLOCK_ROWS):
        stop = min(start + EMBEDDING_BLOCK_ROWS, total)
        t0 = time.perf_counter()
        rows_base, rows_other = reader_base.take(ids_base[start:stop]), reader_other.take(ids_other[start:stop])
        t1 = time.perf_counter()
        acc.add(rows_base, rows_other)
        t_read += t1 - t0
        t_cost += time.perf_counter() - t1
        progress("aligning embeddings", stop, total)
    reader_base.close()
    reader_other.close()
    base.source.release()
    other.source.release()
    progress("solving hidden-dimension assignment", 0, 1)
    t0 = time.perf_counter()
    choice = choose_alignment(acc, mode)
    t_choose = time.perf_counter() - t0
    progress("solving hidden-dimension assignment", 1, 1)
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
        n_shared_tokens=int(total),
        method=choice.method,
        tokens=tokens,
        rotation=choice.rotation,
        quality={**choice.quality, "notes": list(choice.notes)} if choice.notes else dict(choice.quality),
        reason=choice.reason,
        requested=align,
    )


def _attention_names(model: Model, index: int) -> list[str]:
    layer = model.view.layers[index]
    return sorted({layer.q.name, layer.k.name})


class _RawRead:
    """Raw reads of one layer's tensors into their buffers, on a background thread.

    File reads release the GIL and mostly wait on the disk, so the next
    layer arrives while BLAS scores this one; :meth:`result` joins and
    re-raises whatever the read raised.
    """

    def __init__(self, index: int, jobs: list[tuple[RawLayout, RawBuffer]]) -> None:
        self.index = index
        self._jobs = jobs
        self._arrays: list[np.ndarray] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="awmtrace-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            # O_DIRECT: the disk fills the buffer without the CPU time a
            # page-cache copy would take from the BLAS threads.
            self._arrays = [buf.read(layout, direct=True) for layout, buf in self._jobs]
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> list[np.ndarray]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._arrays


class _Sides:
    """Reads Q and K of a layer of either model, aligned, into float32 buffers reused from layer to layer.

    The base model's columns are gathered by the alignment index and the
    other model's are multiplied by the signs (index-and-sign, never a
    selection matmul). Plain safetensors tensors (F32/F16/BF16, not fused,
    not transposed) are read into reused :class:`RawBuffer` memory,
    the next layer on a background thread (:meth:`prefetch`), and converted
    (and gathered, at 2 bytes per element for bf16) straight into the
    float32 buffer; anything else goes through :func:`read_attention`.
    Returned sample matrices ``(n_other, d_out)`` are Fortran-ordered views,
    as SYRK wants, and stay valid until the next read of the same model side.
    """

    def __init__(self, a: Model, b: Model, al: Alignment) -> None:
        self.a, self.b, self.al = a, b, al
        n_base = al.hidden_size_a if al.base == "a" else al.hidden_size_b
        self._gather = not (al.index.size == n_base and np.array_equal(al.index, np.arange(n_base)))
        self._flip = al.n_sign_flips > 0
        self._rotation = al.rotation
        if self._rotation is not None:
            # Orthogonal alignment: the base's samples are rotated instead (see _align); no gather, no flips.
            self._gather = self._flip = False
        self._sign_bits = np.where(al.signs < 0, 0x8000, 0).astype(np.uint16)
        self._buffers: dict[tuple[Any, ...], np.ndarray] = {}
        self._raw: dict[tuple[str, str], RawBuffer] = {}
        self._pending: dict[str, _RawRead] = {}
        self.read_s = 0.0

    def _buffer(self, key: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            self._buffers.pop(key, None)
            buf = self._buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def model(self, side: str) -> Model:
        return self.a if side == "a" else self.b

    def _raw_jobs(self, side: str, index: int) -> list[tuple[RawLayout, RawBuffer]] | None:
        """(layout, buffer) for Q and K when both can be read raw, else ``None``."""
        model = self.model(side)
        layer = model.view.layers[index]
        if any(r.part is not None or r.transposed for r in (layer.q, layer.k)):
            return None
        layouts = [model.source.raw_layout(r.name) for r in (layer.q, layer.k)]
        if any(lay is None or len(lay.shape) != 2 for lay in layouts):
            return None
        return [
            (lay, self._raw.setdefault((side, role), RawBuffer())) for role, lay in zip(("q", "k"), layouts, strict=True) if lay is not None
        ]

    def _wait(self, side: str) -> _RawRead | None:
        """Join the read in flight for ``side`` (its buffers are about to be reused or used)."""
        pending = self._pending.pop(side, None)
        if pending is not None:
            pending.result()
        return pending

    def prefetch(self, side: str, index: int) -> None:
        """Start reading layer ``index`` of ``side`` (call after the previous layer's :meth:`samples`)."""
        model = self.model(side)
        if not 0 <= index < model.view.n_layers:
            return
        self._wait(side)
        jobs = self._raw_jobs(side, index)
        if jobs is None:
            model.source.prefetch(_attention_names(model, index))
            return
        self._pending[side] = _RawRead(index, jobs)

    def samples(self, side: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Aligned sample matrices of Q and K of layer ``index`` of model ``side`` (``"a"``/``"b"``)."""
        started = time.perf_counter()
        model = self.model(side)
        layer = model.view.layers[index]
        is_base = side == self.al.base
        out = []
        pending = self._wait(side)
        jobs = self._raw_jobs(side, index)
        if jobs is not None:
            if pending is not None and pending.index == index:
                raws = pending.result()
            else:
                raws = [buf.read(lay) for lay, buf in jobs]
            for role, ref, (lay, _), raw in zip(("q", "k"), (layer.q, layer.k), jobs, raws, strict=True):
                out.append(self._align(side, role, raw, is_base, lay.dtype, f"{lay.path}: tensor {ref.name!r}"))
        else:
            q, k = read_attention(model.source, model.view, layer)
            model.source.release()
            for role, w in (("q", q), ("k", k)):
                out.append(self._align(side, role, w, is_base, "F32", f"{model.spec}: layer {index} {role}"))
        self.read_s += time.perf_counter() - started
        return out[0], out[1]

    def _align(self, side: str, role: str, w: np.ndarray, is_base: bool, dtype: str, where: str) -> np.ndarray:
        """``w``: ``(d_out, hidden)`` as stored (``BF16`` as uint16 bits) -> aligned float32 samples ``(n_other, d_out)``."""
        if is_base and self._gather:
            # Gather before converting: half the bytes for bf16, and np.take
            # into a buffer is several times faster than fancy indexing,
            # whose result here would not even be C-ordered.
            shape = (w.shape[0], self.al.index.size)
            w = np.take(w, self.al.index, axis=1, out=self._buffer(("gather", w.dtype, shape), shape, w.dtype))
        x = self._buffer(("x", side, role), w.shape, np.float32)
        flip = not is_base and self._flip
        if dtype == "BF16":
            # bf16 is the top half of a float32: widen, flipping the sign bit
            # of the columns to negate in the same pass, then shift up.
            bits = x.view(np.uint32)
            if flip:
                np.bitwise_xor(w, self._sign_bits[None, :], out=bits)
            else:
                np.copyto(bits, w)
            np.left_shift(bits, 16, out=bits)
        else:
            np.copyto(x, w)
            if flip:
                np.multiply(x, self.al.signs[None, :], out=x)
        if not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise NumericalError(f"{where}: {bad} NaN/Inf value(s) in the weights; the checkpoint is damaged")
        if is_base and self._rotation is not None:
            x = self._rotate(side, role, x)
        return x.T

    def _rotate(self, side: str, role: str, x: np.ndarray) -> np.ndarray:
        """Orthogonal alignment: ``x`` ``(d_out, n_base)`` -> ``x @ rotation`` ``(d_out, n_other)``, i.e. samples ``rotation.T @ X_base``.

        One GEMM per matrix into a reused C-ordered buffer, whose transpose is the Fortran-ordered view SYRK wants.
        """
        assert self._rotation is not None
        out = self._buffer(("rot", side, role), (x.shape[0], self._rotation.shape[1]), np.float32)
        return np.matmul(x, self._rotation, out=out)


def _score_same_depth(sides: _Sides, n_layers: int, backend: Backend, progress: Progress) -> list[LayerScore]:
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


def _score_matched(sides: _Sides, la: int, lb: int, backend: Backend, progress: Progress) -> tuple[list[LayerScore], np.ndarray]:
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


def _aligned_samples(w: np.ndarray, al: Alignment, is_base: bool) -> np.ndarray:
    """``w``: float32 ``(d_out, hidden)`` -> aligned samples ``(n_other, d_out)``: base columns gathered, other's signed (in place).

    With an orthogonal alignment the base's samples are ``rotation.T @ w.T`` and the other's are used as they are.
    """
    if al.rotation is not None:
        return (w @ al.rotation).T if is_base else w.T
    if is_base:
        if not (al.is_identity and al.index.size == w.shape[1]):
            w = np.take(w, al.index, axis=1)
    elif al.n_sign_flips:
        w *= al.signs[None, :]
    return w.T


def _score_ffn(
    a: Model, b: Model, al: Alignment, layers: Sequence[LayerScore], weights: Sequence[str], backend: Backend, progress: Progress
) -> dict[str, Any]:
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
            for side, model in (("a", a), ("b", b)):
                mats = read_ffn(model.source, model.view, model.view.layers[ls.index_a if side == "a" else ls.index_b], weight)
                model.source.release()
                is_base = (side == "a") == (al.base == "a")
                terms[side] = [(expert, backend.gram_terms(_aligned_samples(w, al, is_base))) for expert, w in mats]
                del mats
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


def wants_ffn(weights: str | Iterable[str]) -> bool:
    """Whether ``weights`` (as ``--weights`` takes it) asks for FFN scores, i.e. FFN tensors must be read."""
    return bool({"up", "gate"} & set(_parse_weights(weights))) if weights else False


def compare_models(
    a: Model,
    b: Model,
    *,
    weights: str | Iterable[str] = ("q", "k"),
    align: str = "auto",
    device: str = "auto",
    null: NullModel | str | Path | None = None,
    min_shared_tokens: int = MIN_SHARED_TOKENS,
    z_related: float = stats.Z_RELATED,
    z_inconclusive: float = stats.Z_INCONCLUSIVE,
    progress: Progress | None = None,
) -> PairResult:
    """Compare two opened models. See :func:`compare`."""
    progress = progress or _no_progress
    started = time.perf_counter()
    kinds = _parse_weights(weights)
    null_model = null if isinstance(null, NullModel) else load_null(null)
    backend, device_note = select_backend(device)
    notes: list[str] = [device_note] if device_note else []
    al = align_models(a, b, align, min_shared_tokens, progress)
    n_small = min(al.hidden_size_a, al.hidden_size_b)
    if al.n_shared_tokens < n_small:
        notes.append(f"only {al.n_shared_tokens} shared tokens for {n_small} hidden dimensions: the alignment may be unreliable")
    notes.extend(al.quality.get("notes", []))
    null_info = null_model.to_dict()
    null_info["covers_alignment"] = null_covers_alignment(null_info, al.method)
    if not null_info["covers_alignment"]:
        notes.append(alignment_caveat(null_info, al.method))
    sides = _Sides(a, b, al)
    la, lb = a.view.n_layers, b.view.n_layers
    if la == lb:
        layers = _score_same_depth(sides, la, backend, progress)
        matching: dict[str, Any] = {"method": "identity", "n_layers_a": la, "n_layers_b": lb}
    else:
        layers, full = _score_matched(sides, la, lb, backend, progress)
        matching = {"method": "lap", "n_layers_a": la, "n_layers_b": lb, "score_matrix": full.round(6).tolist()}
    matching["pairs"] = [[s.index_a, s.index_b] for s in layers]
    ffn_kinds = [w for w in kinds if w in ("up", "gate")]
    ffn = _score_ffn(a, b, al, layers, ffn_kinds, backend, progress) if ffn_kinds else None
    score_q = float(np.mean([s.score_q for s in layers]))
    score_k = float(np.mean([s.score_k for s in layers]))
    score = (score_q + score_k) / 2.0
    z = stats.z_score(score, null_model)
    all_notes = notes
    return PairResult(
        a=a.summary(),
        b=b.summary(),
        score=score,
        score_q=score_q,
        score_k=score_k,
        layers=tuple(layers),
        alignment=al.to_dict(),
        layer_matching=matching,
        z=z,
        p_value=stats.normal_p_value(z),
        p_empirical=stats.empirical_p_value(score, null_model.scores),
        verdict=stats.verdict(z, z_related, z_inconclusive),
        null=null_info,
        ffn=ffn,
        device=backend.name,
        elapsed_s=time.perf_counter() - started,
        notes=tuple(dict.fromkeys(all_notes)),  # the models' own notes are in a["notes"], b["notes"]
        tool_version=__version__,
    )


def compare(a: str | Path, b: str | Path, **options: Any) -> PairResult:
    """Compare checkpoint ``a`` (the candidate base) with ``b`` (the suspect).

    ``a``/``b``: a model directory, a ``.safetensors``/``.gguf``/``.bin`` file,
    or a Hub id ``org/name[@revision]``. Options: ``weights`` (``"q,k"``; add
    ``up``/``gate`` for FFN scores), ``align`` (``"auto"``, ``"lap"``,
    ``"orthogonal"`` or ``"ids"``; see :func:`align_models`),
    ``device`` (``auto``/``cpu``/``cuda``), ``null`` (name or file),
    ``min_shared_tokens``, ``z_related``, ``z_inconclusive``, ``progress``.
    """
    progress = options.get("progress")
    ffn = wants_ffn(options.get("weights", ()))
    with open_model(a, progress, ffn=ffn) as ma, open_model(b, progress, ffn=ffn) as mb:
        return compare_models(ma, mb, **options)


def compare_many(pairs: Iterable[tuple[str | Path, str | Path]], **options: Any) -> list[PairResult]:
    """Compare several pairs, opening each distinct model once."""
    pairs = list(pairs)
    opened: dict[str, Model] = {}
    progress = options.get("progress")
    try:
        results = []
        for a, b in pairs:
            for spec in (a, b):
                if str(spec) not in opened:
                    opened[str(spec)] = open_model(spec, progress, ffn=wants_ffn(options.get("weights", ())))
            results.append(compare_models(opened[str(a)], opened[str(b)], **options))
        return results
    finally:
        for m in opened.values():
            m.close()
