"""Running a suite: find each model (models folder, else the Hub), compare every pair, store each result.

Pairs already stored with the same inputs, options and tool version are
skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awmtrace import _version, pipeline
from awmtrace.errors import AwmError, InputNotFound, StoreError, UsageError
from awmtrace.io import hub
from awmtrace.nulls import load_null
from awmtrace.store import DEFAULT_STORE, ResultsStore, StoredRecord, model_fingerprint, record_key
from awmtrace.suites.definitions import Suite, get_suite
from awmtrace.types import NullModel, PairResult

__all__ = ["PairOutcome", "SuiteRun", "ModelPool", "locate_model", "run_suite"]

log = logging.getLogger("awmtrace.suites")

#: ``progress(stage, done, total)``, as :data:`awmtrace.pipeline.Progress`.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PairOutcome:
    """What happened to one pair: ``done`` (compared now), ``skipped`` (already stored),
    ``missing`` (a model could not be found or fetched) or ``failed`` (the comparison raised)."""

    index: int
    total: int
    name_a: str
    name_b: str
    status: str
    record: StoredRecord | None = None
    message: str | None = None
    missing_models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "a": self.name_a, "b": self.name_b, "status": self.status, "message": self.message}
        if self.missing_models:
            d["missing_models"] = list(self.missing_models)
        if self.record is not None:
            r = self.record.result
            d.update(key=self.record.key, score=r.get("score"), score_q=r.get("score_q"), score_k=r.get("score_k"), z=r.get("z"))
            d["verdict"] = (r.get("verdict") or {}).get("label")
        return d


@dataclass(frozen=True)
class SuiteRun:
    """The outcome of :func:`run_suite`: one :class:`PairOutcome` per pair, and why models were missing."""

    suite: Suite
    store_path: str
    outcomes: tuple[PairOutcome, ...]
    missing_models: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def complete(self) -> bool:
        """Every pair has a stored result."""
        return all(o.status in ("done", "skipped") for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name,
            "store": self.store_path,
            "counts": {s: self.count(s) for s in ("done", "skipped", "missing", "failed")},
            "complete": self.complete,
            "missing_models": dict(self.missing_models),
            "pairs": [o.to_dict() for o in self.outcomes],
        }


_MODEL_FILE_EXTS = (".gguf", ".safetensors", ".bin")


def locate_model(
    name: str,
    repo_id: str | None,
    models_dir: str | Path | None = None,
    *,
    fetch: bool = True,
    ffn: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Where model ``name`` is: ``models_dir/name``, ``models_dir/<repo name>``, ``models_dir/<org>/<name>``, else the Hub.

    Each of those may be a folder or a file with a ``.gguf``/``.safetensors``/``.bin`` suffix.

    Raises :class:`InputNotFound` (no repo id, or fetching off) or
    :class:`awmtrace.errors.HubError` (the Hub refused, offline and not cached).
    """
    tried: list[Path] = []
    if models_dir is not None:
        root = Path(models_dir).expanduser()
        stems = [root / name]
        if repo_id:
            stems += [root / repo_id.split("@")[0].split("/")[-1], root / repo_id.split("@")[0]]
        # A model is a folder, or a single file named after it (llama.cpp users keep flat NAME.gguf files).
        candidates = [c for stem in stems for c in (stem, *(stem.with_name(stem.name + ext) for ext in _MODEL_FILE_EXTS))]
        for c in candidates:
            if c.exists():
                return c
        tried = stems
    exts = "/".join(_MODEL_FILE_EXTS)
    looked = f" (looked for {', '.join(str(t) for t in dict.fromkeys(tried))}, as folders or {exts} files)" if tried else ""
    if repo_id is None:
        raise InputNotFound(
            f"{name}: not found locally{looked} and the suite gives no Hub repo id; put it in --models-dir as {name}/ or {name}.gguf"
        )
    if not fetch:
        raise InputNotFound(f"{name}: not found locally{looked} and fetching from the Hub is off")
    return hub.ensure_local(repo_id, progress, ffn=ffn, select=pipeline.hub_tensors)


class ModelPool:
    """The models of one suite run: each located once, opened on first use, closed after the last pair that uses it.

    A model that cannot be found or opened is remembered as its error, so
    every pair that needs it reports the same reason without trying again.
    """

    def __init__(self, suite: Suite, models_dir: str | Path | None, *, fetch: bool, ffn: bool, progress: Progress) -> None:
        self.suite = suite
        self.models_dir = models_dir
        self.fetch = fetch
        self.ffn = ffn
        self.progress = progress
        self.uses = Counter(m for pair in suite.pairs for m in pair)
        self.missing: dict[str, str] = {}
        self._located: dict[str, Path | AwmError] = {}
        self._opened: dict[str, pipeline.Model | AwmError] = {}
        self._fingerprints: dict[str, str] = {}

    def locate(self, name: str) -> Path | AwmError:
        """Where model ``name`` is, or why it cannot be had."""
        if name not in self._located:
            try:
                self._located[name] = locate_model(
                    name, self.suite.repo_of(name), self.models_dir, fetch=self.fetch, ffn=self.ffn, progress=self.progress
                )
            except AwmError as exc:
                self._located[name] = exc
                self.missing[name] = str(exc)
                log.info("%s: model %s is missing: %s", self.suite.name, name, exc)
        return self._located[name]

    def fingerprint(self, name: str) -> str:
        """The located model's fingerprint (Hub commit, or file names, sizes and times)."""
        if name not in self._fingerprints:
            path = self.locate(name)
            if isinstance(path, AwmError):
                raise path
            self._fingerprints[name] = model_fingerprint(path)
        return self._fingerprints[name]

    def open(self, name: str) -> pipeline.Model:
        """The opened model (raises the :class:`AwmError` that opening it raised, every time)."""
        if name not in self._opened:
            path = self.locate(name)
            try:
                if isinstance(path, AwmError):
                    raise path
                self._opened[name] = pipeline.open_model(path, self.progress)
            except AwmError as exc:
                self._opened[name] = exc
        m = self._opened[name]
        if isinstance(m, AwmError):
            raise m
        return m

    def release(self, name: str) -> None:
        """One pair that used ``name`` is done; close it after its last pair."""
        self.uses[name] -= 1
        if self.uses[name] <= 0 and name in self._opened:
            m = self._opened.pop(name)
            if not isinstance(m, AwmError):
                m.close()

    def close(self) -> None:
        for m in self._opened.values():
            if not isinstance(m, AwmError):
                m.close()
        self._opened.clear()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _null_identity(null: Any) -> tuple[NullModel, dict[str, Any]]:
    model = null if isinstance(null, NullModel) else load_null(null)
    scores_digest = hashlib.sha256(json.dumps(list(model.scores)).encode()).hexdigest()[:16]
    return model, {"name": model.name, "mean": model.mean, "std": model.std, "n": model.n, "scores": scores_digest}


@dataclass(frozen=True)
class _Job:
    """What every pair of one run shares: the suite, where results go, the options and how to compare."""

    suite: Suite
    db: ResultsStore
    options: dict[str, Any]
    version: str
    compare: Callable[[pipeline.Model, pipeline.Model], PairResult]


def _run_pair(job: _Job, pool: ModelPool, i: int, a: str, b: str) -> PairOutcome:
    s, total = job.suite, len(job.suite.pairs)
    paths = {n: pool.locate(n) for n in (a, b)}
    lost = [n for n, p in paths.items() if isinstance(p, AwmError)]
    if lost:
        return PairOutcome(i, total, a, b, "missing", message="; ".join(f"{n}: {paths[n]}" for n in lost), missing_models=tuple(lost))
    key = record_key(s.name, a, b, pool.fingerprint(a), pool.fingerprint(b), job.options, job.version)
    if job.db.has(key):
        return PairOutcome(i, total, a, b, "skipped", job.db.get(key), "already in the store")
    try:
        result = job.compare(pool.open(a), pool.open(b))
    except AwmError as exc:
        log.info("%s: %s vs %s failed: %s", s.name, a, b, exc)
        return PairOutcome(i, total, a, b, "failed", message=str(exc))
    record = StoredRecord.create(
        suite=s.name, name_a=a, name_b=b, result=result, label=s.label, category=s.category,
        spec_a=str(paths[a]), spec_b=str(paths[b]), fingerprint_a=pool.fingerprint(a), fingerprint_b=pool.fingerprint(b),
        options=job.options, tool_version=job.version,
    )  # fmt: skip
    if record.key != key:
        raise StoreError(f"{job.db.path}: internal error: record key {record.key[:12]} differs from the planned {key[:12]}")
    job.db.put(record)
    return PairOutcome(i, total, a, b, "done", record)


def _run_all(job: _Job, pool: ModelPool, notify: Callable[[PairOutcome], None]) -> list[PairOutcome]:
    outcomes = []
    for i, (a, b) in enumerate(job.suite.pairs, start=1):
        try:
            outcome = _run_pair(job, pool, i, a, b)
        finally:
            pool.release(a)
            pool.release(b)
        outcomes.append(outcome)
        notify(outcome)
    return outcomes


def run_suite(  # noqa: PLR0913 - keyword options of the public API, as compare() takes them
    suite: str | Suite,
    *,
    store: ResultsStore | str | Path = DEFAULT_STORE,
    models_dir: str | Path | None = None,
    device: str = "auto",
    weights: str | Iterable[str] = ("q", "k"),
    align: str = "auto",
    null: Any = None,
    min_shared_tokens: int | None = None,
    fetch: bool = True,
    suites_file: str | Path | None = None,
    progress: Progress | None = None,
    on_pair: Callable[[PairOutcome], None] | None = None,
) -> SuiteRun:
    """Compare every pair of ``suite`` and store each result; skip pairs already stored.

    A pair's key (see :func:`awmtrace.store.record_key`) covers the suite, the
    pair, each model's fingerprint (Hub commit, or file names/sizes/mtimes),
    the options that change the result (``weights``, ``align``,
    ``min_shared_tokens``, the null) and the tool version. Each model is
    opened once and closed after the last pair that uses it. Models that
    cannot be found or fetched are reported (``missing_models``) and their
    pairs skipped; a comparison that fails is reported and the run goes on.
    ``on_pair`` is called after each pair, the result already committed.
    """
    s = get_suite(suite, suites_file) if isinstance(suite, str) else suite
    kinds = pipeline.parse_weights(weights)
    null_model, null_id = _null_identity(null)
    min_tokens = pipeline.MIN_SHARED_TOKENS if min_shared_tokens is None else int(min_shared_tokens)
    if align not in pipeline.ALIGN_CHOICES:
        raise UsageError(f"align must be one of {', '.join(pipeline.ALIGN_CHOICES)}, got {align!r}")
    options = {"weights": list(kinds), "align": align, "min_shared_tokens": min_tokens, "null": null_id}
    progress = progress or (lambda stage, done, total: None)

    compare_options = pipeline.CompareOptions(weights=kinds, align=align, device=device, null=null_model, min_shared_tokens=min_tokens)

    def compare(ma: pipeline.Model, mb: pipeline.Model) -> PairResult:
        return pipeline.compare_models(ma, mb, compare_options, progress=progress)

    pool = ModelPool(s, models_dir, fetch=fetch, ffn=pipeline.wants_ffn(kinds), progress=progress)
    db = store if isinstance(store, ResultsStore) else ResultsStore(store)
    try:
        with pool:
            job = _Job(s, db, options, _version.__version__, compare)
            outcomes = _run_all(job, pool, on_pair or (lambda outcome: None))
    finally:
        if db is not store:
            db.close()
    return SuiteRun(s, str(db.path), tuple(outcomes), pool.missing)
