"""Time ``awm stress`` on a SmolLM2-135M-shaped synthetic checkpoint (not run in CI).

Writes the model once (hidden 576, 30 layers, 9 heads, 3 KV heads, vocab
49152, FFN 1536, bf16 safetensors, attention-norm gains drawn around 1) into
``--out``, then runs ``awm stress MODEL --json -q`` in a fresh process and
reports wall time, the child's CPU time and peak RSS, the machine's load
average, and each transform's seconds and score.

    python benchmarks/bench_stress.py --out /tmp/stress_bench/smollm135m
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_model(out: Path) -> None:
    import ml_dtypes

    from awmtrace import synth

    m = synth.random_llama(hidden=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab=49152, ffn=1536, seed=0)
    rng = np.random.default_rng(1)
    gains = {
        f"model.layers.{i}.input_layernorm.weight": np.exp(rng.normal(0, 0.3, 576)).astype(ml_dtypes.bfloat16) for i in range(m.n_layers)
    }
    synth.write_hf(m, out, dtype="bfloat16", extra_tensors=gains)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder of the generated model (written once, reused)")
    ap.add_argument("--transforms", default="all")
    args = ap.parse_args()
    if not (args.out / "model.safetensors").is_file():
        write_model(args.out)
    cmd = [
        sys.executable,
        "-c",
        "from awmtrace.cli import main; main()",
        "stress",
        str(args.out),
        "--json",
        "-q",
        "--transforms",
        args.transforms,
    ]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    data = json.loads(done.stdout)
    print(
        f"wall {wall:.1f} s, CPU {usage.ru_utime + usage.ru_stime:.1f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for row in data["transforms"]:
        err = "-" if row["check_max_rel_err"] is None else f"{row['check_max_rel_err']:.1e}"
        print(f"  {row['name']:<18} {row['seconds']:6.1f} s  score {row['score']:.4f}  z {row['z']:7.1f}  {row['verdict']:<12} check {err}")


if __name__ == "__main__":
    main()
