"""Time AWM comparisons of synthetic full-size pairs: wall time, peak RSS, stage times, scores.

Each measurement runs in a fresh process after the checkpoint files have been
evicted from the page cache (``posix_fadvise(DONTNEED)`` on every file, which
needs no root; ``/proc/sys/vm/drop_caches`` too when it is writable), so the
reads are cold. Peak RSS is that process's ``ru_maxrss`` from ``wait4``.

Implementations:

* ``awmtrace``: ``awmtrace.pipeline.compare(A, B, device="cpu")`` in a child
  Python process (``--align auto``), with the stage times the pipeline logs at
  DEBUG level; ``awmtrace-lap`` and ``awmtrace-orthogonal`` force that
  alignment (``auto`` minus ``lap`` is what deciding costs; ``orthogonal``
  is the price of the rotation path);
* ``cli``: ``awm compare A B --json -q --device cpu`` as a user runs it;
* ``baseline``: ``benchmarks/baseline_reference.py`` (a re-statement of the
  paper code's computational structure, see that file).

Usage::

    python benchmarks/make_checkpoints.py --shape llama2-7b
    python benchmarks/bench_pair.py --shape llama2-7b --impl awmtrace,baseline
    python benchmarks/bench_pair.py --shape tinyllama --pairs derived --impl cli --repeat 3

Prints a Markdown table; ``--json-out FILE`` also writes every measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE_DIRS = {"tinyllama": "tinyllama-1.1b", "llama2-7b": "llama2-7b", "llama2-13b": "llama2-13b"}
GIB = 1024**3


def evict(folder: Path) -> str:
    """Drop ``folder``'s files from the page cache; returns how."""
    how = "posix_fadvise(DONTNEED)"
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd) if os.access(path, os.W_OK) else None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
        how += " + drop_caches"
    except OSError:
        pass
    return how


def cached_fraction(folder: Path) -> float | None:
    """Fraction of ``folder``'s safetensors bytes in the page cache, by ``mincore`` (``None`` if unavailable)."""
    import ctypes
    import mmap

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    resident = total = 0
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            n_pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n_pages)()
            ok = libc.mincore(addr, size, vec) == 0
            libc.munmap(addr, size)
            if not ok:
                return None
            resident += sum(v & 1 for v in vec)
            total += n_pages
        finally:
            os.close(fd)
    return resident / total if total else None


def _loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot, from /proc/stat (``None`` elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS, CPU use (its own and other processes') and its JSON stdout."""
    busy_before = _busy_cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN, which
    # holds the maximum over all reaped children, so each measurement runs
    # through a fresh intermediate process (see measure()).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = usage.ru_maxrss * 1024
    own_cpu = usage.ru_utime + usage.ru_stime
    busy_after = _busy_cpu_seconds()
    # CPU time other processes took while this one ran: the load the timing shared the machine with.
    others = None if busy_before is None or busy_after is None else max(0.0, busy_after - busy_before - own_cpu)
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1], "wall_s": wall}
    try:
        payload = json.loads(out)
    except json.JSONDecodeError:
        return {"error": "child printed no JSON: " + out[-300:], "wall_s": wall}
    return {"wall_s": wall, "peak_rss_bytes": rss, "cpu_s": own_cpu, "others_cpu_s": others, "payload": payload}


def measure(impl: str, a: Path, b: Path, timeout: float) -> dict:
    """One cold measurement in a fresh intermediate process (so RUSAGE_CHILDREN is this run's alone)."""
    evicted = {str(p): evict(p) for p in (a, b)}
    cached = {str(p): cached_fraction(p) for p in (a, b)}
    load = _loadavg()
    cmd = [sys.executable, __file__, "--measure-one", impl, str(a), str(b), "--timeout", str(timeout)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    result.update(
        {"impl": impl, "a": str(a), "b": str(b), "evicted": evicted, "cached_before": cached, "load_before": load, "load_after": _loadavg()}
    )
    return result


def _child_command(impl: str, a: str, b: str) -> list[str]:
    if impl in ("awmtrace", "awmtrace-auto", "awmtrace-lap", "awmtrace-orthogonal"):
        align = impl.partition("-")[2] or "auto"
        return [sys.executable, __file__, "--child", a, b, align]
    if impl == "cli":
        awm = shutil.which("awm") or str(Path(sys.executable).with_name("awm"))
        return [awm, "compare", a, b, "--json", "-q", "--device", "cpu"]
    if impl == "baseline":
        return [sys.executable, str(HERE / "baseline_reference.py"), a, b, "--json"]
    raise SystemExit(f"unknown impl {impl!r}")


def child(a: str, b: str, align: str = "auto") -> int:
    """Run the library comparison and print scores plus the pipeline's logged stage times."""
    timings: dict[str, float] = {}
    marks: list[tuple[str, float]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for k, v in getattr(record, "timings", {}).items():
                timings[k] = timings.get(k, 0.0) + float(v)

    logger = logging.getLogger("awmtrace")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if not marks or marks[-1][0] != stage:
            marks.append((stage, time.perf_counter() - t0))

    from awmtrace.pipeline import compare

    result = compare(a, b, device="cpu", align=align, progress=progress)
    end = time.perf_counter() - t0
    stages = {}
    for (stage, start), nxt in zip(marks, [*marks[1:], ("end", end)], strict=True):
        stages[stage] = stages.get(stage, 0.0) + nxt[1] - start
    print(
        json.dumps(
            {
                "score": result.score,
                "score_q": result.score_q,
                "score_k": result.score_k,
                "z": result.z,
                "verdict": result.verdict.label,
                "n_sign_flips": result.alignment.get("n_sign_flips"),
                "alignment": {k: result.alignment.get(k) for k in ("method", "requested", "reason", "quality")},
                "elapsed_s": result.elapsed_s,
                "progress_stages_s": {k: round(v, 2) for k, v in stages.items()},
                "timings_s": {k: round(v, 2) for k, v in timings.items()},
            }
        )
    )
    return 0


def _payload_scores(impl: str, payload: dict) -> dict:
    if impl == "cli":
        return {"score": payload.get("score"), "score_q": payload.get("score_q"), "score_k": payload.get("score_k"), "z": payload.get("z")}
    return payload


def table(rows: list[dict]) -> str:
    head = (
        "| shape | pair | impl | wall s | peak RSS GiB | score (q / k) | stages s | other processes' CPU |\n"
        "|---|---|---|---:|---:|---|---|---:|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['pair']} | {r['impl']} | error: {r['error']} | | | | {r.get('load_before', '')} |")
            continue
        p = _payload_scores(r["impl"], r["payload"])
        stages = r["payload"].get("timings_s") or {}
        st = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        sc = f"{p['score']:.4f} ({p['score_q']:.4f} / {p['score_k']:.4f})" if p.get("score") is not None else ""
        ncpu = os.cpu_count() or 1
        others = r.get("others_cpu_s")
        load = f"{100 * others / (r['wall_s'] * ncpu):.0f}%" if others is not None else "n/a"
        lines.append(
            f"| {r['shape']} | {r['pair']} | {r['impl']} | {r['wall_s']:.1f} | {r['peak_rss_bytes'] / GIB:.2f} | {sc} | {st} | {load} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1], argv[2], argv[3] if len(argv) > 3 else "auto")
    if argv and argv[0] == "--measure-one":
        impl, a, b = argv[1:4]
        timeout = float(argv[5]) if len(argv) > 5 else 3600.0
        print(json.dumps(run_child(_child_command(impl, a, b), timeout)))
        return 0
    ap = argparse.ArgumentParser(description="Cold-cache wall time and peak RSS of AWM comparisons.")
    ap.add_argument("--shape", choices=sorted(SHAPE_DIRS), required=True)
    ap.add_argument("--pairs", default="derived,independent", help="which models to compare with the base")
    ap.add_argument("--impl", default="awmtrace", help="comma-separated: awmtrace (auto), awmtrace-lap, awmtrace-orthogonal, cli, baseline")
    ap.add_argument("--checkpoints", type=Path, default=HERE / "checkpoints")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    stem = SHAPE_DIRS[args.shape]
    base = args.checkpoints / f"{stem}-base"
    rows = []
    for pair in [p.strip() for p in args.pairs.split(",") if p.strip()]:
        other = args.checkpoints / f"{stem}-{pair}"
        for path in (base, other):
            if not (path / "model.safetensors.index.json").is_file():
                print(f"{path}: missing; run benchmarks/make_checkpoints.py --shape {args.shape}", file=sys.stderr)
                return 2
        for impl in [i.strip() for i in args.impl.split(",") if i.strip()]:
            for _ in range(args.repeat):
                r = measure(impl, base, other, args.timeout)
                r.update({"shape": args.shape, "pair": f"base vs {pair}"})
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k not in ("evicted",)}), file=sys.stderr, flush=True)
    print(
        f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.1f} GiB RAM; "
        f"python {sys.version.split()[0]}; finished {time.strftime('%Y-%m-%d %H:%M')}, load average {_loadavg()} (1/5 min)"
    )
    print(table(rows))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
