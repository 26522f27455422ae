"""The offline demo: a planted model family, compared with its base.

Nothing is downloaded. The family is written as real checkpoints (Hugging Face
directories with safetensors + tokenizer.json, and one GGUF file), so the demo
exercises the same readers, alignment and estimator as real models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from awmtrace import synth
from awmtrace.pipeline import Progress, compare_models, open_model
from awmtrace.types import PairResult

__all__ = ["DemoMember", "write_demo_family", "run_demo"]


@dataclass(frozen=True)
class DemoMember:
    name: str
    relation: str  # what was done to the base; "independent" for the stranger
    related: bool
    path: Path


def write_demo_family(folder: Path, hidden: int = 256, n_layers: int = 6, vocab: int = 4096) -> list[DemoMember]:
    """Write the base and its relatives under ``folder``; returns them base first."""
    base = synth.random_llama(hidden=hidden, n_layers=n_layers, n_heads=8, n_kv_heads=4, vocab=vocab, seed=0)
    permuted, _, _ = synth.permute_hidden(synth.drift(base, 0.05, seed=11), seed=2)
    keep = [i for i in range(n_layers) if i % 3 != 2]  # drop every third layer
    members = [
        ("base", "the base model itself", True, synth.write_hf(base, folder / "base")),
        ("fine-tuned", "30% noise drift", True, synth.write_hf(synth.drift(base, 0.3), folder / "fine-tuned")),
        (
            "permuted",
            "permute+sign+x3",
            True,
            synth.write_hf(permuted, folder / "permuted"),
        ),
        ("width-pruned", f"hidden {hidden}->{int(hidden * 0.75)}", True, synth.write_hf(synth.prune_width(base), folder / "width-pruned")),
        ("depth-pruned", f"{n_layers}->{len(keep)} layers", True, synth.write_hf(synth.prune_depth(base, keep), folder / "depth-pruned")),
        ("gguf-q8_0", "GGUF Q8_0 copy", True, synth.write_gguf(base, folder / "base-q8_0.gguf", "Q8_0")),
        (
            "independent",
            "another seed",
            False,
            synth.write_hf(
                synth.random_llama(hidden=hidden, n_layers=n_layers, n_heads=8, n_kv_heads=4, vocab=vocab, seed=1234),
                folder / "independent",
            ),
        ),
    ]
    return [DemoMember(n, r, rel, p) for n, r, rel, p in members]


def run_demo(folder: Path, progress: Progress | None = None, device: str = "cpu") -> list[tuple[DemoMember, PairResult]]:
    """Write the family and compare every member with the base."""
    members = write_demo_family(folder)
    out: list[tuple[DemoMember, PairResult]] = []
    with open_model(members[0].path) as base:
        for i, member in enumerate(members[1:], 1):
            with open_model(member.path) as other:
                out.append((member, compare_models(base, other, device=device)))
            if progress is not None:
                progress("comparing with the base", i, len(members) - 1)
    return out
