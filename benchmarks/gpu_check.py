"""The device check: torch/CUDA tests on the GPU, then a Llama-2-7B-shaped pair from a warm `awm matrix` cache.

Meant for a short session on a GPU machine (at most 10 minutes on one H200; about 4 minutes expected):

    python benchmarks/gpu_check.py --out "$OUT"          # writes $OUT/gpu_check.json and prints a summary

Steps, each timed:

1. facts: torch, CUDA, the device, CPU count;
2. the test files that exercise the torch backend and ``--device`` (``pytest -q``), with CUDA visible;
3. two *lean* 7B-shaped checkpoints (embedding, Q, K and attention norms only: the tensors AWM reads, the
   same values as the full synthetic models; ``make_checkpoints.py --lean``): base and a derived copy;
4. ``awm compare base derived --device cuda`` (the GPU path of a single comparison) and ``--device cpu``;
5. ``awm matrix base derived`` with an empty cache (two extractions and the first pair), then again with the
   cache warm (one further pair: the figure the issue's "7B pair from a warm cache" asks for) on the CPU and,
   with ``--device cuda``, with the cached Grams unpacked and scored on the GPU (the alignment stays on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ["tests/test_backend.py", "tests/test_perf_paths.py", "tests/test_cli.py", "tests/test_cka.py", "tests/test_matrix.py"]


def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        out = {"exit": proc.returncode, "stdout_tail": proc.stdout[-3000:], "stderr_tail": proc.stderr[-2000:]}
    except subprocess.TimeoutExpired:
        out = {"exit": "timeout"}
    out["wall_s"] = round(time.perf_counter() - started, 2)
    return out


def facts() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_check")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/awm-gpu-check"))
    ap.add_argument("--shape", default="llama2-7b", help="make_checkpoints.py shape (tinyllama to rehearse on a small machine)")
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "facts": facts()}
    cuda = bool(res["facts"].get("cuda_available"))
    awm = shutil.which("awm") or "awm"

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2))

    if not args.skip_tests:
        res["tests"] = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS], timeout=240)
        save()
    res["checkpoints"] = _run(
        [sys.executable, str(HERE / "make_checkpoints.py"), "--shape", args.shape, "--kinds", "base,derived", "--lean",
         "--out", str(args.work)], timeout=300)  # fmt: skip
    save()
    # make_checkpoints names folders by the shape's full name (llama2-7b-base, tinyllama-1.1b-base, ...).
    pair = [str(next(p for p in sorted(args.work.glob(f"*-{kind}")) if (p / "config.json").exists())) for kind in ("base", "derived")]
    for device in ("cuda", "cpu") if cuda else ("cpu",):
        res[f"compare_{device}"] = _run([awm, "compare", *pair, "--json", "-q", "--device", device], timeout=300)
        save()
    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs = [("matrix_cold", "cpu"), ("matrix_warm", "cpu")] + ([("matrix_warm_cuda", "cuda")] if cuda else [])
    for name, device in runs:
        store = args.work / f"{name}.sqlite"
        store.unlink(missing_ok=True)
        cmd = [awm, "matrix", *pair, "--json", "-q", "--cache-dir", str(cache), "--store", str(store), "--device", device]
        res[name] = _run(cmd, timeout=300)
        save()
    summary = {k: (v.get("wall_s"), v.get("exit")) for k, v in res.items() if isinstance(v, dict) and "wall_s" in v}
    print(json.dumps({"facts": res["facts"], "wall_s_and_exit": summary}, indent=2))
    return 0 if all(v[1] == 0 for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
