"""Benchmark ``awm matrix`` against separate ``awm compare`` runs, in one run, on full-size synthetic checkpoints.

Parts (``--parts``), each measured in this invocation:

* ``compare``: every pair as its own ``awm compare A B --json -q --device cpu`` process
  (checkpoints evicted from the page cache first);
* ``matrix``: one ``awm matrix ... --json -q`` process with an empty cache (checkpoints
  evicted first), with the CLI's default worker processes (one per CPU): wall time and peak RSS
  (``wait4``: the largest of the process and its workers), scores against ``compare``'s;
* ``matrix-w1``: the same with ``--workers 1`` (everything in one process);
* ``warm``: ``awm matrix`` again with the cache warm and a new store (pairs only);
* ``ray``: the Python API with the cache warm, local engine with 2 workers vs Ray on a
  local 2-CPU cluster: wall times and identical scores;
* ``cost``: the cost model for 1,000 models on K workers from the figures above.

Usage::

    python benchmarks/bench_matrix.py --shape tinyllama --extra /tmp/coll_ckpt/d2/tinyllama-1.1b-derived ... \\
        --json-out benchmarks/out/matrix-tinyllama.json
    python benchmarks/bench_matrix.py --shape llama2-7b --parts matrix,warm,compare
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 1024**3
CKPT = Path("/work/ckpt")
SHAPE_DIRS = {"tinyllama": "tinyllama-1.1b", "llama2-7b": "llama2-7b"}


def evict(folder: Path) -> None:
    """Drop ``folder``'s files from the page cache (``posix_fadvise(DONTNEED)``; other users' caches are left alone)."""
    for path in sorted(folder.rglob("*")) if folder.is_dir() else [folder]:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_rss(cmd: list[str]) -> tuple[float, float, str, int]:
    """Run ``cmd`` and return (wall, peak RSS GiB of that very process via wait4, stdout, exit code)."""
    started = time.perf_counter()
    out_path = Path(f"/tmp/.bench-matrix-{os.getpid()}.out")
    with out_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    out_path.unlink()
    return wall, usage.ru_maxrss * 1024 / GIB, text, proc.returncode


def other_cpu(seconds: float, before: tuple[float, float]) -> float:
    """Share of the machine's CPU that others used: (total busy - ours) / wall, from /proc/stat."""
    busy, idle = _cpu()
    return (busy - before[0]) / max((busy - before[0]) + (idle - before[1]), 1e-9)


def _cpu() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def part_compare(awm: str, models: list[Path]) -> dict[str, Any]:
    for m in models:
        evict(m)
    out: dict[str, Any] = {"pairs": {}}
    started, cpu0 = time.perf_counter(), _cpu()
    for a, b in itertools.combinations(range(len(models)), 2):
        wall, rss, text, _ = run_rss([awm, "compare", str(models[a]), str(models[b]), "--json", "-q", "--device", "cpu"])
        out["pairs"][f"{a},{b}"] = {"wall_s": round(wall, 2), "rss_gib": round(rss, 3), "score": json.loads(text)["score"]}
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["machine_busy"] = round(other_cpu(out["wall_s"], cpu0), 2)
    return out


def part_matrix(awm: str, models: list[Path], work: Path, store: str, cold: bool, workers: int | None = None) -> dict[str, Any]:
    if cold:
        shutil.rmtree(work / "cache", ignore_errors=True)
        for m in models:
            evict(m)
    cmd = [awm, "matrix", *map(str, models), "--json", "-q", "--cache-dir", str(work / "cache"), "--store", str(work / store)]
    cpu0 = _cpu()
    wall, rss, text, code = run_rss(cmd if workers is None else [*cmd, "--workers", str(workers)])
    data = json.loads(text)
    n = len(models)
    scores = {f"{a},{b}": data["score"][a][b] for a, b in itertools.combinations(range(n), 2)}
    cache_bytes = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(rss, 3), "exit": code, "scores": scores,
            "cache_gib": round(cache_bytes / GIB, 3),
            "families": data["families"], "tree": data["tree"], "machine_busy": round(other_cpu(wall, cpu0), 2)}  # fmt: skip


def part_ray(models: list[Path], work: Path) -> dict[str, Any]:
    import ray

    from awmtrace.collections.engine import LocalEngine, RayEngine
    from awmtrace.collections.matrix import matrix

    local = LocalEngine(2)
    t0 = time.perf_counter()
    a = matrix(models, cache_dir=work / "cache", engine=local)
    t_local = time.perf_counter() - t0
    local.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        eng = RayEngine()
        t0 = time.perf_counter()
        b = matrix(models, cache_dir=work / "cache", engine=eng)
        t_ray = time.perf_counter() - t0
    finally:
        ray.shutdown()
    n_pairs = len(models) * (len(models) - 1) // 2
    return {"local_2_workers_s": round(t_local, 1), "ray_2_cpus_s": round(t_ray, 1), "identical_scores": a.score == b.score,
            "overhead_per_pair_s": round((t_ray - t_local) / n_pairs, 3),
            "overhead_fraction": round((t_ray - t_local) / t_local, 3)}  # fmt: skip


def cost_model(res: dict[str, Any], n_models: int, shape: str) -> dict[str, Any]:
    """1,000 models of this shape on K workers, from the measured per-model and per-pair figures (7B: scaled from this shape)."""
    n = len(res["models"])
    pairs = n * (n - 1) // 2
    warm = res["warm"]["wall_s"]
    per_pair = warm / pairs
    per_model = max((res["matrix"]["wall_s"] - warm) / n, 0.0)
    entry_gib = res["matrix"]["cache_gib"] / n
    big_pairs = 1000 * 999 // 2
    rows = {}
    for k in (1, 16, 64, 256):
        rows[f"K={k}"] = {"wall_h": round((1000 * per_model + big_pairs * per_pair) / k / 3600, 1)}
    return {"shape": shape, "per_model_s": round(per_model, 1), "per_pair_s": round(per_pair, 2), "entry_gib": round(entry_gib, 3),
            "models": 1000, "pairs": big_pairs, "cache_tib": round(1000 * entry_gib / 1024, 2), "wall_by_workers": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPE_DIRS), default="tinyllama")
    ap.add_argument("--kinds", default="base,derived,independent")
    ap.add_argument(
        "--extra", nargs="*", default=[], type=Path, help="further model folders (e.g. made by make_checkpoints.py --out /tmp/...)"
    )
    ap.add_argument("--parts", default="matrix,warm,compare,ray,cost")
    ap.add_argument("--work", type=Path, default=Path("/tmp/awm-bench-matrix"))
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    models = [CKPT / f"{SHAPE_DIRS[args.shape]}-{k}" for k in args.kinds.split(",")] + list(args.extra)
    awm = shutil.which("awm") or "awm"
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    res: dict[str, Any] = {
        "shape": args.shape,
        "models": [str(m) for m in models],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for store in ("cold.sqlite", "cold1.sqlite", "warm.sqlite"):
        (args.work / store).unlink(missing_ok=True)
    if "matrix" in parts:
        res["matrix"] = part_matrix(awm, models, args.work, "cold.sqlite", cold=True)
        print(json.dumps({"matrix": {k: v for k, v in res["matrix"].items() if k != "tree"}}), flush=True)
    if "matrix-w1" in parts:  # the same, one process (--workers 1), to show what the worker processes bring
        res["matrix_w1"] = part_matrix(awm, models, args.work, "cold1.sqlite", cold=True, workers=1)
        print(json.dumps({"matrix_w1": {k: res["matrix_w1"][k] for k in ("wall_s", "peak_rss_gib")}}), flush=True)
    if "warm" in parts:
        res["warm"] = part_matrix(awm, models, args.work, "warm.sqlite", cold=False)
        print(json.dumps({"warm": {k: res["warm"][k] for k in ("wall_s", "peak_rss_gib")}}), flush=True)
    if "compare" in parts:
        res["compare"] = part_compare(awm, models)
        print(json.dumps({"compare": {k: res["compare"][k] for k in ("wall_s", "machine_busy")}}), flush=True)
        if "matrix" in res:
            diffs = [abs(res["matrix"]["scores"][p] - v["score"]) for p, v in res["compare"]["pairs"].items()]
            res["speedup"] = round(res["compare"]["wall_s"] / res["matrix"]["wall_s"], 2)
            res["max_abs_score_diff"] = max(diffs)
            print(json.dumps({"speedup": res["speedup"], "max_abs_score_diff": res["max_abs_score_diff"]}), flush=True)
    if "ray" in parts:
        res["ray"] = part_ray(models, args.work)
        print(json.dumps({"ray": res["ray"]}), flush=True)
    if "cost" in parts and "matrix" in res and "warm" in res:
        res["cost_model"] = cost_model(res, len(models), args.shape)
        print(json.dumps({"cost_model": res["cost_model"]}), flush=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
