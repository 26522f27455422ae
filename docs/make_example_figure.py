"""Regenerate docs/example_pair.png: the figure `awm compare A B --plot` draws for a depth-pruned relative.

A is the base of the offline demo family (``awm demo``: hidden 256, 6 layers);
B is that base fine-tuned (30% noise drift) and then depth-pruned to layers
0, 1, 3, 4, so its layers must be matched by LAP. Run from the repository root:

    python docs/make_example_figure.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from awmtrace import synth
from awmtrace.pipeline import compare
from awmtrace.report.figures import plot_pair

OUT = Path(__file__).resolve().parent / "example_pair.png"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="awm-example-") as tmp:
        base = synth.random_llama(hidden=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab=4096, seed=0)
        child = synth.prune_depth(synth.drift(base, 0.3), [0, 1, 3, 4])
        a = synth.write_hf(base, Path(tmp) / "base")
        b = synth.write_hf(child, Path(tmp) / "fine-tuned+depth-pruned")
        result = compare(a, b, device="cpu").to_dict()
    plot_pair(result, OUT)
    summary = {k: result[k] for k in ("score", "score_q", "score_k", "z")}
    summary["pairs"] = result["layer_matching"]["pairs"]
    json.dump(summary, sys.stdout, indent=1)
    print(f"\nwrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
