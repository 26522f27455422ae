"""The torch backend (the GPU path) computes the same numbers as numpy; device selection explains itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from awmtrace.core.backend import NumpyBackend, select_backend
from awmtrace.errors import OptionalDependencyMissing, UsageError
from awmtrace.pipeline import compare

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("n", "p", "q"), [(64, 64, 64), (128, 16, 32), (48, 100, 8)])
def test_torch_and_numpy_backends_agree(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n * p + q)
    x = rng.standard_normal((n, p)).astype(np.float32)
    y = (x[:, :1] + rng.standard_normal((n, q))).astype(np.float32)
    tb, _ = select_backend("torch-cpu")
    nb = NumpyBackend()
    assert tb.ucka(x, y) == pytest.approx(nb.ucka(x, y), abs=1e-5)
    assert tb.cka_from_gram_terms(tb.gram_terms(x), tb.gram_terms(y)) == pytest.approx(
        nb.cka_from_gram_terms(nb.gram_terms(x), nb.gram_terms(y)), abs=1e-5
    )


def test_pipeline_on_torch_backend_matches_cpu(family: dict[str, Path]) -> None:
    for name in ("drift", "depth"):
        cpu = compare(family["base"], family[name], device="cpu")
        tor = compare(family["base"], family[name], device="torch-cpu")
        assert tor.device == "torch-cpu"
        assert tor.score == pytest.approx(cpu.score, abs=1e-5)
        assert tor.layer_matching["pairs"] == cpu.layer_matching["pairs"]


def test_auto_falls_back_to_cpu_with_a_note_only_when_cuda_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build that sees no GPU: worth a note
    backend, note = select_backend("auto")
    assert backend.name == "cpu"
    assert note is not None and "sees no CUDA device" in note
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build: the CPU is what auto means, no note
    backend, note = select_backend("auto")
    assert backend.name == "cpu" and note is None
    with pytest.raises(OptionalDependencyMissing, match="--device cuda is not available"):
        select_backend("cuda")
    with pytest.raises(UsageError, match="unknown device"):
        select_backend("tpu")
