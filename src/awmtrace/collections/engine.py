"""Where per-model extraction and pair scoring run: this process, local worker processes, or Ray tasks.

The work is two plain functions (:func:`extract_task`, :func:`pair_task`)
that take and return JSON-ready values, so every engine runs exactly the same
code and results are identical whichever one ran them. Workers share the
cache through its folder (a path every worker sees); results come back to
the calling process, which alone writes the results store.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from awmtrace.errors import AwmError, OptionalDependencyMissing, UsageError, first_line

__all__ = ["Engine", "LocalEngine", "RayEngine", "make_engine", "extract_task", "pair_task", "ENGINES"]

ENGINES = ("local", "ray")


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"error": str(exc) or type(exc).__name__, "error_class": type(exc).__name__}


def extract_task(spec: str, cache_root: str, limit_bytes: int) -> dict[str, Any]:
    """Open ``spec`` and make sure its cache entry exists; returns its key, fingerprint, whether weights were read, and
    the input's own facts (:func:`awmtrace.collections.extract.input_facts`: Hub repo, upload date, model card).

    Those facts belong to this input, not to the entry: the entry is keyed by content, which a local copy or
    another repo may share.
    """
    from awmtrace.collections.cache import ModelCache
    from awmtrace.collections.extract import input_facts
    from awmtrace.pipeline import open_model

    cache = ModelCache(cache_root, limit_bytes)
    try:
        with open_model(spec) as model:
            entry = cache.get(model)
            facts = input_facts(model.source.path)
        return {"key": entry.key, "fingerprint": entry.fingerprint, "built": cache.builds, "notes": cache.notes, **facts}
    except AwmError as exc:
        return _failure(exc)
    except (OSError, ValueError, MemoryError) as exc:
        return _failure(exc)


#: Cache entries this process has opened and checked, by (cache folder, key): a worker scoring many pairs
#: checks and parses each entry once, not once per pair. Bounded; entries hold only memory maps.
_OPEN: OrderedDict[tuple[str, str], Any] = OrderedDict()
_OPEN_MAX = 16


def _entry(cache: Any, key: str) -> Any:
    """The checked :class:`CacheEntry` ``key`` of ``cache``, reused within this process while its folder is unchanged."""
    memo = (str(cache.root), key)
    entry = _OPEN.get(memo)
    if entry is not None and entry.unchanged():
        _OPEN.move_to_end(memo)
        return entry
    _forget(cache, key)
    entry = cache.open(key)
    if entry is not None:
        _OPEN[memo] = entry
        while len(_OPEN) > _OPEN_MAX:
            _OPEN.popitem(last=False)[1].close()
    return entry


def _forget(cache: Any, key: str) -> None:
    old = _OPEN.pop((str(cache.root), key), None)
    if old is not None:
        old.close()


def pair_task(key_a: str, key_b: str, spec_a: str, spec_b: str, cache_root: str, options: dict[str, Any]) -> dict[str, Any]:
    """Score one pair from two cache entries; returns ``PairResult.to_dict()`` or ``{"error": ...}``."""
    from awmtrace.collections.cache import CacheCorrupt, ModelCache
    from awmtrace.collections.pairs import score_pair

    cache = ModelCache(cache_root)
    ea, eb = _entry(cache, key_a), _entry(cache, key_b)
    if ea is None or eb is None:
        return {"error": "a cache entry is missing or failed its checks", "error_class": "CacheCorrupt", "stale": True}
    try:
        return score_pair(ea, eb, spec_a=spec_a, spec_b=spec_b, **options).to_dict()
    except CacheCorrupt as exc:
        for e in (ea, eb):
            _forget(cache, e.key)
            cache.discard(e.path, str(exc))
        return {**_failure(exc), "stale": True, "notes": cache.notes}
    except (AwmError, OSError, ValueError, MemoryError) as exc:
        return _failure(exc)
    finally:
        ea.release()
        eb.release()


Job = tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Environment variables that size BLAS/OpenMP thread pools; a worker process gets its share of the CPUs.
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "AWMTRACE_THREADS")


class Engine:
    """Runs jobs ``(function, args)``; :meth:`run` yields ``(job index, result)`` as jobs finish.

    ``threads``: how many threads one job may use (BLAS and the pair's array passes); ``pair_threads``:
    what a pair is told to use (``None``: :func:`awmtrace.collections.pairs.default_threads` decides where it runs).
    """

    name = "local"
    workers = 1
    threads = 1
    pair_threads: int | None = None

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, (fn, args) in enumerate(jobs):
            yield i, fn(*args)

    def close(self) -> None:
        return None


class LocalEngine(Engine):
    """``workers`` processes on this machine (no Ray; ``None``: one per CPU); one worker runs jobs in this process.

    The CPUs are shared out: each of ``w`` worker processes gets ``cpus // w`` BLAS threads (set in its
    environment before it starts) and as many threads for a pair's array passes.
    """

    def __init__(self, workers: int | None = None) -> None:
        cpus = available_cpus()
        workers = cpus if workers is None else workers
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self.threads = max(1, cpus // workers)
        self._pool: ProcessPoolExecutor | None = None

    def _submit(self, jobs: Sequence[Job]) -> dict[Future[dict[str, Any]], int]:
        """Submit every job. Workers are spawned as jobs arrive (a fresh interpreter: no copy of this process's
        BLAS threads or locks) and read their thread counts from the environment when BLAS loads, so the
        environment holds their share only while they start; this process's own BLAS is already loaded."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        saved = {var: os.environ.get(var) for var in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, str(self.threads)))
        try:
            return {self._pool.submit(fn, *args): i for i, (fn, args) in enumerate(jobs)}
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.workers == 1 or len(jobs) <= 1:
            yield from super().run(jobs)  # here, with every CPU (a pair's threads default to them)
            return
        futures = self._submit(jobs)
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _check_reachable(address: str) -> None:
    """Fail fast with one line when ``HOST:PORT`` does not answer (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with `ray start --head` or fix --ray-address"
        ) from None


class RayEngine(Engine):
    """Jobs as Ray tasks on an existing cluster (``address``: ``auto`` or ``HOST:PORT``), or a local one when ``address`` is ``None``."""

    name = "ray"
    pair_threads = 1  # each task holds one CPU of its node

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise OptionalDependencyMissing("--engine ray needs Ray: pip install 'awmtrace[ray]'") from None
        self.ray = ray
        self._started = False
        if address not in (None, "auto") and not ray.is_initialized():
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(
                    f"cannot reach a Ray cluster at {address!r} ({first_line(exc)}); start one with `ray start --head` or fix --ray-address"
                ) from None
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote: dict[Callable[..., Any], Any] = {}

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        ray = self.ray
        refs = {}
        for i, (fn, args) in enumerate(jobs):
            remote = self._remote.get(fn)
            if remote is None:
                remote = self._remote[fn] = ray.remote(num_cpus=1, max_retries=1)(fn)
            refs[remote.remote(*args)] = i
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_engine(engine: str = "local", workers: int | None = None, ray_address: str | None = None) -> Engine:
    if engine == "local":
        return LocalEngine(workers)
    if engine == "ray":
        return RayEngine(ray_address)
    raise UsageError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
