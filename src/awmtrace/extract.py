"""Reading aligned layers: the fast path from checkpoint bytes to the float32 sample matrices UCKA scores.

:class:`AlignedReader` reads Q/K (and FFN up/gate) of either model of a pair,
folds the norm gains (:class:`NormGains`), and applies the hidden-dimension
alignment: the base's columns gathered by the alignment index (or rotated,
for an orthogonal alignment), the other's signed. Plain safetensors tensors
are read raw (O_DIRECT, on a background thread, into reused buffers) and
bf16 is widened with bit operations; everything else goes through
:mod:`awmtrace.arch.resolve`. :mod:`awmtrace.pipeline` scores what it returns.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import numpy as np

from awmtrace.arch.read import read_attention, read_ffn, read_norm
from awmtrace.errors import NumericalError
from awmtrace.io import TensorSource
from awmtrace.io.raw import RawBuffer, RawLayout
from awmtrace.types import Alignment, ModelView

__all__ = ["AlignedReader", "ModelLike", "NormGains", "attention_names", "needs_gather"]

#: float32 elements of a layer matrix converted (and gain-folded) at a time: 1 MiB, cache-sized.
BLOCK_ELEMENTS = 1 << 18


class ModelLike(Protocol):
    """What the reader needs of an opened model (:class:`awmtrace.pipeline.Model` is one)."""

    @property
    def spec(self) -> str: ...

    @property
    def source(self) -> TensorSource: ...

    @property
    def view(self) -> ModelView: ...


def needs_gather(al: Alignment) -> bool:
    """Whether the base's columns must be gathered by ``al.index``: not for an orthogonal alignment, nor an identity index."""
    if al.rotation is not None:
        return False
    n_base = al.hidden_size_a if al.base == "a" else al.hidden_size_b
    return not (al.index.size == n_base and np.array_equal(al.index, np.arange(n_base)))


def attention_names(model: ModelLike, index: int) -> list[str]:
    """Tensor names of Q and K of layer ``index`` (one name when they are fused), for prefetching."""
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
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> list[np.ndarray]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._arrays


class NormGains:
    """The norm gains of one model, read as layers are scored, and what was folded (for the result).

    :meth:`get` returns the float32 ``(hidden,)`` gain to fold into a layer's
    Q/K (``"attn"``) or FFN inputs (``"ffn"``), or ``None`` when there is
    nothing to multiply: folding is off, the family's norm has no weight,
    the checkpoint lacks the tensor (scored unfolded, recorded as missing),
    or every gain is exactly 1 (folding would change nothing).
    """

    def __init__(self, model: ModelLike, fold: bool) -> None:
        self.model = model
        self.fold = fold and model.view.norm_kind != "none"
        self._cache: dict[str, np.ndarray | None] = {}  # tensor name -> gain (None: all ones); shared norms read once
        self.folded: dict[str, set[int]] = {"attn": set(), "ffn": set()}
        self.missing: dict[str, set[int]] = {"attn": set(), "ffn": set()}
        self.zero_entries: dict[str, int] = {}

    def get(self, index: int, which: str) -> np.ndarray | None:
        if not self.fold:
            return None
        layer = self.model.view.layers[index]
        ref = layer.attn_norm if which == "attn" else layer.ffn_norm
        if ref is None:
            self.missing[which].add(index)
            return None
        if ref.name not in self._cache:
            gain = read_norm(self.model.source, self.model.view, ref)
            zeros = int(gain.size - np.count_nonzero(gain))
            if zeros:
                self.zero_entries[ref.name] = zeros
            self._cache[ref.name] = None if bool(np.all(gain == 1.0)) else gain
        self.folded[which].add(index)
        return self._cache[ref.name]

    def record(self) -> dict[str, Any]:
        """What the result says about this model's norms: kind, offset, whether and where gains were folded."""
        view = self.model.view
        return {
            "kind": view.norm_kind,
            "offset": view.norm_offset,
            "folded": self.fold and bool(self.folded["attn"]),
            "n_layers_folded": len(self.folded["attn"]),
            "missing_layers": sorted(self.missing["attn"]),
            "n_ffn_layers_folded": len(self.folded["ffn"]),
            "missing_ffn_layers": sorted(self.missing["ffn"]),
            "zero_gain_entries": dict(self.zero_entries),
        }


class AlignedReader:
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
    With ``fold_norms`` each matrix is scored as ``W @ diag(gamma)`` (see :class:`NormGains`).
    """

    def __init__(self, a: ModelLike, b: ModelLike, al: Alignment, fold_norms: bool = True) -> None:
        self.a, self.b, self.al = a, b, al
        self.gains = {"a": NormGains(a, fold_norms), "b": NormGains(b, fold_norms)}
        self._gather = needs_gather(al)
        self._rotation = al.rotation
        # Orthogonal alignment: the base's samples are rotated instead (see _align); no gather, no flips.
        self._flip = al.n_sign_flips > 0 and self._rotation is None
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

    def model(self, side: str) -> ModelLike:
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
            model.source.prefetch(attention_names(model, index))
            return
        self._pending[side] = _RawRead(index, jobs)

    def samples(self, side: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Aligned sample matrices of Q and K of layer ``index`` of model ``side`` (``"a"``/``"b"``)."""
        started = time.perf_counter()
        model = self.model(side)
        layer = model.view.layers[index]
        is_base = side == self.al.base
        gain = self.gains[side].get(index, "attn")
        out = []
        pending = self._wait(side)
        jobs = self._raw_jobs(side, index)
        if jobs is not None:
            if pending is not None and pending.index == index:
                raws = pending.result()
            else:
                raws = [buf.read(lay) for lay, buf in jobs]
            for role, ref, (lay, _), raw in zip(("q", "k"), (layer.q, layer.k), jobs, raws, strict=True):
                out.append(self._align(side, role, raw, is_base, lay.dtype, f"{lay.path}: tensor {ref.name!r}", gain))
        else:
            q, k = read_attention(model.source, model.view, layer)
            model.source.release()
            for role, w in (("q", q), ("k", k)):
                out.append(self._align(side, role, w, is_base, "F32", f"{model.spec}: layer {index} {role}", gain))
        self.read_s += time.perf_counter() - started
        return out[0], out[1]

    def ffn_samples(self, side: str, index: int, weight: str) -> list[tuple[int | None, np.ndarray]]:
        """Aligned FFN ``weight`` (``"up"``/``"gate"``) samples of layer ``index`` of ``side``: ``(expert, (n_other, d_ff))`` per expert.

        Dense layers give one ``(None, samples)``; the gain of the FFN norm is folded (see :class:`NormGains`).
        Fresh arrays, read in one piece through :func:`read_ffn` (no reused buffers: MoE layers hold every expert).
        """
        model = self.model(side)
        mats = read_ffn(model.source, model.view, model.view.layers[index], weight)
        gain = self.gains[side].get(index, "ffn")
        model.source.release()
        is_base = side == self.al.base
        return [(expert, _aligned_samples(w, self.al, is_base, gain, self._gather)) for expert, w in mats]

    def _align(
        self, side: str, role: str, w: np.ndarray, is_base: bool, dtype: str, where: str, gain: np.ndarray | None = None
    ) -> np.ndarray:
        """``w``: ``(d_out, hidden)`` as stored (``BF16`` as uint16 bits) -> aligned float32 samples ``(n_other, d_out)``.

        ``gain`` ``(hidden,)``: the norm gain folded in (``W @ diag(gain)``) before alignment.
        """
        # Per-column factor applied after conversion: the gain (gathered like the base's
        # columns) and, on the other side, the signs; None keeps the XOR sign trick below.
        scale: np.ndarray | None = None
        if gain is not None:
            if is_base:
                scale = gain[self.al.index] if self._gather else gain
            else:
                scale = gain * self.al.signs if self._flip else gain
        if is_base and self._gather:
            # Gather before converting: half the bytes for bf16, and np.take
            # into a buffer is several times faster than fancy indexing,
            # whose result here would not even be C-ordered.
            shape = (w.shape[0], self.al.index.size)
            w = np.take(w, self.al.index, axis=1, out=self._buffer(("gather", w.dtype, shape), shape, w.dtype))
        x = self._buffer(("x", side, role), w.shape, np.float32)
        flip = not is_base and self._flip and scale is None
        # Row blocks of ~1 MiB: widening, the gain and the finiteness check each
        # pass over a block while it is still in cache, not over the whole matrix.
        step = max(1, BLOCK_ELEMENTS // max(1, w.shape[1]))
        finite = True
        for start in range(0, w.shape[0], step):
            wb, xb = w[start : start + step], x[start : start + step]
            if dtype == "BF16":
                # bf16 is the top half of a float32: widen, flipping the sign bit
                # of the columns to negate in the same pass, then shift up.
                bits = xb.view(np.uint32)
                if flip:
                    np.bitwise_xor(wb, self._sign_bits[None, :], out=bits)
                else:
                    np.copyto(bits, wb)
                np.left_shift(bits, 16, out=bits)
            else:
                np.copyto(xb, wb)
                if flip:
                    np.multiply(xb, self.al.signs[None, :], out=xb)
            if scale is not None:
                np.multiply(xb, scale[None, :], out=xb)
            finite = finite and bool(np.isfinite(xb).all())
        if not finite:
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


def _aligned_samples(w: np.ndarray, al: Alignment, is_base: bool, gain: np.ndarray | None, gather: bool) -> np.ndarray:
    """``w``: float32 ``(d_out, hidden)`` -> aligned samples ``(n_other, d_out)``; ``gather``: :func:`needs_gather` of ``al``.

    The gain is folded, the base's columns gathered and the other's signed (in place). With an orthogonal
    alignment the base's samples are ``rotation.T @ w.T`` and the other's are used as they are.
    The float32 counterpart of :meth:`AlignedReader._align` (same values: gathering commutes with
    the per-column gain, and multiplying by a sign is exact).
    """
    if gain is not None:
        w *= gain[None, :]
    if al.rotation is not None:
        return (w @ al.rotation).T if is_base else w.T
    if is_base:
        if gather:
            w = np.take(w, al.index, axis=1)
    elif al.n_sign_flips:
        w *= al.signs[None, :]
    return w.T
