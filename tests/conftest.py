"""Shared fixtures: tiny generated checkpoints, never downloaded ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from awmtrace import synth


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A planted model family as Hugging Face directories (float32 safetensors + tokenizer.json).

    Keys: base, drift, perm (hidden permutation + signs + scale), width (pruned
    to 3/4 of hidden and heads), depth (layers 0, 1, 3 of 4), independent.
    """
    root = tmp_path_factory.mktemp("family")
    base = synth.random_llama(seed=0)
    perm, _, _ = synth.permute_hidden(base)
    models = {
        "base": base,
        "drift": synth.drift(base, 0.3),
        "perm": perm,
        "width": synth.prune_width(base),
        "depth": synth.prune_depth(base, [0, 1, 3]),
        "independent": synth.random_llama(seed=42),
    }
    return {name: synth.write_hf(m, root / name) for name, m in models.items()}
