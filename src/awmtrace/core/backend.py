"""Where UCKA runs: numpy on the CPU, or torch on a CUDA device (optional extra).

Both backends compute the same estimator (:mod:`awmtrace.core.cka`) with the
same float32 matrices and float64 sums; tests check they agree. The torch
backend is also usable on the CPU (``device="torch-cpu"``), which is how CI
tests it without a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from awmtrace.core import cka
from awmtrace.errors import OptionalDependencyMissing, UsageError

__all__ = ["Backend", "NumpyBackend", "TorchBackend", "select_backend", "DEVICES", "is_device"]

log = logging.getLogger("awmtrace")

#: What ``device`` accepts (``cuda:N`` for any device index N); :func:`is_device` checks a value.
DEVICES = ("auto", "cpu", "torch-cpu", "cuda", "cuda:N")


def is_device(device: str) -> bool:
    """Whether :func:`select_backend` accepts ``device`` (one of :data:`DEVICES`, ``cuda:N`` with a number)."""
    return device in ("auto", "cpu", "torch-cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


class Backend:
    """UCKA on sample matrices ``(n, p)``; Gram terms for reuse across many pairs."""

    name = "cpu"

    def ucka(self, x: np.ndarray, y: np.ndarray) -> float:
        return cka.unbiased_linear_cka(x, y)

    def gram_terms(self, x: np.ndarray) -> Any:
        return cka.gram_terms(x)

    def cka_from_gram_terms(self, tx: Any, ty: Any) -> float:
        return cka.cka_from_terms(cka.hsic_from_gram_terms(tx, ty), tx.self_hsic, ty.self_hsic)


class NumpyBackend(Backend):
    name = "cpu"

    def __init__(self) -> None:
        # Gram buffers reused by every ucka() call of one comparison.
        self.workspace = cka.GramWorkspace()

    def ucka(self, x: np.ndarray, y: np.ndarray) -> float:
        return cka.unbiased_linear_cka(x, y, workspace=self.workspace)


@dataclass(frozen=True, eq=False)
class _TorchTerms:
    gram: Any  # (n, n) float32 tensor, zero diagonal (full, not triangular)
    row_sums: Any  # (n,) float64 tensor
    total: float
    self_hsic: float


class TorchBackend(Backend):
    """The same estimator with torch tensors on ``device`` (``cuda`` or ``cpu``)."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = "cuda" if self.device.type == "cuda" else "torch-cpu"
        self._unpack: dict[tuple[int, int], tuple[Any, Any, Any]] = {}

    def _t(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    _hsic = staticmethod(cka.hsic_from_sums)

    def _in_float32_range(self, t: Any) -> Any:
        """``t`` ``(n, p)``, or ``t`` times a power of two when its Gram would overflow or underflow float32 (UCKA is scale-invariant)."""
        max_sq = float((t * t).sum(dim=1, dtype=self.torch.float64).max()) if t.numel() else 1.0
        if not cka.float32_out_of_range(max_sq):
            return t
        scale = cka.float32_rescale(float(t.abs().max()), int(t.shape[1]))
        return t if scale is None else t * scale

    def gram_terms(self, x: np.ndarray) -> _TorchTerms:
        torch = self.torch
        t = self._in_float32_range(self._t(x))
        n = t.shape[0]
        k = t @ t.T
        k.fill_diagonal_(0.0)
        r = k.sum(dim=1, dtype=torch.float64)
        total = float(r.sum())
        tr_kk = float((k * k).sum(dim=1, dtype=torch.float64).sum())
        return _TorchTerms(gram=k, row_sums=r, total=total, self_hsic=self._hsic(tr_kk, total, total, float(r @ r), n))

    def cka_from_gram_terms(self, tx: _TorchTerms, ty: _TorchTerms) -> float:
        torch = self.torch
        n = tx.gram.shape[0]
        tr_kl = float((tx.gram * ty.gram).sum(dim=1, dtype=torch.float64).sum())
        hxy = self._hsic(tr_kl, tx.total, ty.total, float(tx.row_sums @ ty.row_sums), n)
        return cka.cka_from_terms(hxy, tx.self_hsic, ty.self_hsic)

    def _unpack_index(self, n: int, block: int) -> tuple[Any, Any, Any]:
        """Where a packed Gram's values go in the flattened ``(n, n)`` matrix (:class:`~awmtrace.core.packed.PackedGram`).

        ``(flat, src, mirror)``: value ``p`` lands at ``flat[p]``; values ``src`` (left of their block's
        diagonal square) also land at ``mirror``, above the diagonal. Built once per ``(n, block)``.
        """
        key = (n, block)
        if key not in self._unpack:
            flat, src, mirror = [], [], []
            start = 0
            for r0 in range(0, n, block):
                r1 = min(n, r0 + block)
                rows = np.arange(r0, r1, dtype=np.int64)[:, None]
                flat.append((rows * n + np.arange(r1, dtype=np.int64)).ravel())
                left = np.arange(r0, dtype=np.int64)
                src.append((start + (rows - r0) * r1 + left).ravel())
                mirror.append((left * n + rows).ravel())
                start += (r1 - r0) * r1
            t = self.torch
            self._unpack[key] = (
                t.from_numpy(np.concatenate(flat)).to(self.device),
                t.from_numpy(np.concatenate(src)).to(self.device),
                t.from_numpy(np.concatenate(mirror)).to(self.device),
            )
        return self._unpack[key]

    def packed_terms(self, bits: np.ndarray, n: int, block: int, index: np.ndarray | None = None,
                     signs: np.ndarray | None = None) -> _TorchTerms:  # fmt: skip
        """Gram terms of a packed bfloat16 Gram (zero diagonal), gathered by ``index`` (rows and columns) or signed by ``signs``.

        The same matrix the numpy path builds (:meth:`PackedGram.full`, then the alignment), unpacked on the device.
        """
        torch = self.torch
        flat, src, mirror = self._unpack_index(n, block)
        vals = torch.from_numpy(np.array(bits, dtype=np.uint16).view(np.int16)).to(self.device).view(torch.bfloat16).float()
        k = torch.zeros(n * n, dtype=torch.float32, device=self.device)
        k[flat] = vals
        k[mirror] = vals[src]
        k = k.view(n, n)
        if index is not None:
            idx = torch.from_numpy(np.asarray(index, dtype=np.int64)).to(self.device)
            k = k.index_select(0, idx).index_select(1, idx)
        if signs is not None:
            s = torch.from_numpy(np.asarray(signs, dtype=np.float32)).to(self.device)
            k = k * s[:, None] * s[None, :]
        r = k.sum(dim=1, dtype=torch.float64)
        total = float(r.sum())
        tr_kk = float((k * k).sum(dim=1, dtype=torch.float64).sum())
        m = k.shape[0]
        return _TorchTerms(gram=k, row_sums=r, total=total, self_hsic=self._hsic(tr_kk, total, total, float(r @ r), m))

    def _feature(self, t: Any) -> tuple[Any, Any, float, float]:
        torch = self.torch
        n = t.shape[0]
        sq = (t * t).sum(dim=1, dtype=torch.float64)
        cols = t.sum(dim=0, dtype=torch.float64)
        rows = (t @ cols.to(torch.float32)).to(torch.float64) - sq
        total = float(cols @ cols - sq.sum())
        xtx = t.T @ t
        tr_kk = float((xtx * xtx).sum(dim=1, dtype=torch.float64).sum()) - float(sq @ sq)
        return sq, rows, total, self._hsic(tr_kk, total, total, float(rows @ rows), n)

    def ucka(self, x: np.ndarray, y: np.ndarray) -> float:
        if cka.choose_method(x.shape[0], x.shape[1], y.shape[1]) == "gram":
            return self.cka_from_gram_terms(self.gram_terms(x), self.gram_terms(y))
        torch = self.torch
        tx, ty = self._in_float32_range(self._t(x)), self._in_float32_range(self._t(y))
        n = tx.shape[0]
        sx, rx, totx, hxx = self._feature(tx)
        sy, ry, toty, hyy = self._feature(ty)
        cross = tx.T @ ty
        tr_kl = float((cross * cross).sum(dim=1, dtype=torch.float64).sum()) - float(sx @ sy)
        return cka.cka_from_terms(self._hsic(tr_kl, totx, toty, float(rx @ ry), n), hxx, hyy)


def _torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed (pip install 'awmtrace[torch]')"
    if not torch.cuda.is_available():
        if getattr(torch.version, "cuda", None) is None:
            return False, "PyTorch is a CPU-only build"
        return False, "PyTorch was built with CUDA but sees no CUDA device"
    return True, ""


def select_backend(device: str) -> tuple[Backend, str | None]:
    """The backend for ``device`` and a note for the result when ``auto`` had to fall back."""
    if device == "cpu":
        return NumpyBackend(), None
    if device == "torch-cpu":
        try:
            return TorchBackend("cpu"), None
        except ImportError:
            raise OptionalDependencyMissing("device torch-cpu needs PyTorch: pip install 'awmtrace[torch]'") from None
    if device in ("cuda", "auto") or device.startswith("cuda:"):
        ok, why = _torch_cuda()
        if ok:
            return TorchBackend("cuda" if device == "auto" else device), None
        if device == "auto":
            if why.startswith(("PyTorch is not installed", "PyTorch is a CPU-only build")):
                # An ordinary CPU machine: computing on the CPU is what auto means there; the result's device says so.
                # Only a CUDA build that sees no GPU (a driver or container problem) is worth a note.
                log.info("device auto: %s; computing on the CPU", why)
                return NumpyBackend(), None
            return NumpyBackend(), f"device auto: {why}; computed on the CPU"
        raise OptionalDependencyMissing(f"--device {device} is not available: {why}; use --device cpu or auto")
    raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
