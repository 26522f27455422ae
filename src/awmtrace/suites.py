"""The paper's experiment suites: named lists of model pairs, run into a results store.

A suite names models by short names mapped to Hugging Face repo ids, and
lists pairs of short names (the paper's ``configs.py``; shipped as
``data/suites/paper_suites.json``). :func:`run_suite` finds each model in a
models folder or on the Hub, compares every pair, and stores each result;
:func:`suite_report` turns stored results into the paper's per-pair table,
with the paper's own |z| where ``data/suites/paper_abs_zscores.csv`` has the
pair (matching rules in ``data/suites/README.md``).

A suites file of one's own has the same shape: ``{"suites": {NAME: {"models":
{short: repo_id_or_null}, "pairs": [[a, b], ...], "category": ..., "label":
"related" | "independent"}}}``; ``category`` and ``label`` are optional.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from awmtrace.core.stats import adjust_p_values, rescore
from awmtrace.errors import AwmError, FormatError, InputNotFound, StoreError, UsageError
from awmtrace.store import (
    DEFAULT_STORE,
    ResultsStore,
    StoredRecord,
    model_fingerprint,
    record_key,
)
from awmtrace.types import NullModel

__all__ = [
    "Suite",
    "PaperRow",
    "PairOutcome",
    "SuiteRun",
    "ReportRow",
    "load_suites",
    "get_suite",
    "load_paper_zscores",
    "match_paper",
    "locate_model",
    "run_suite",
    "suite_report",
    "LABELS",
]

log = logging.getLogger("awmtrace.suites")

LABELS = ("related", "independent")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Suite:
    """A named list of pairs. ``models`` maps short names to repo ids (``None``: the paper gives none)."""

    name: str
    category: str
    label: str  # what the pairs are expected to be: "related" | "independent"
    models: dict[str, str | None]
    pairs: list[tuple[str, str]]
    source: str = ""

    @property
    def models_without_repo(self) -> list[str]:
        return [m for m, repo in self.models.items() if repo is None]

    def repo_of(self, model: str) -> str | None:
        return self.models.get(model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "label": self.label,
            "n_pairs": len(self.pairs),
            "n_models": len({m for p in self.pairs for m in p}),
            "models": dict(self.models),
            "models_without_repo": self.models_without_repo,
            "pairs": [{"a": a, "b": b, "repo_a": self.models.get(a), "repo_b": self.models.get(b)} for a, b in self.pairs],
            "source": self.source,
        }


def _data_file(name: str) -> Any:
    return resources.files("awmtrace.data") / "suites" / name


@lru_cache(maxsize=1)
def _meta() -> dict[str, Any]:
    return json.loads(_data_file("suites_meta.json").read_text(encoding="utf-8"))


def _parse_suites(data: Any, source: str, meta: dict[str, Any]) -> dict[str, Suite]:
    def bad(problem: str) -> FormatError:
        return FormatError(f'{source}: {problem} (expected {{"suites": {{NAME: {{"models": {{...}}, "pairs": [[a, b], ...]}}}}}})')

    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise bad("no 'suites' object")
    out: dict[str, Suite] = {}
    for name, entry in data["suites"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("models"), dict) or not isinstance(entry.get("pairs"), list):
            raise bad(f"suite {name!r} needs 'models' (object) and 'pairs' (list)")
        models: dict[str, str | None] = {}
        for short, repo in entry["models"].items():
            if repo is not None and not isinstance(repo, str):
                raise bad(f"suite {name!r}: model {short!r} has a repo id that is not a string")
            models[str(short)] = repo
        pairs: list[tuple[str, str]] = []
        for pair in entry["pairs"]:
            if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise bad(f"suite {name!r}: pair {pair!r} is not two model names")
            unknown = [p for p in pair if p not in models]
            if unknown:
                raise bad(f"suite {name!r}: pair {list(pair)} names {', '.join(unknown)}, which 'models' does not list")
            pairs.append((pair[0], pair[1]))
        known = meta.get(name, {})
        label = str(entry.get("label") or known.get("label") or ("independent" if name.startswith("independent") else "related"))
        if label not in LABELS:
            raise bad(f"suite {name!r}: label {label!r} is not one of {', '.join(LABELS)}")
        category = str(entry.get("category") or known.get("category") or ("independent" if label == "independent" else "custom"))
        out[name] = Suite(name, category, label, models, pairs, source)
    return out


def load_suites(path: str | Path | None = None) -> dict[str, Suite]:
    """The paper's nine suites, or those of a suites file of the same shape."""
    meta = _meta()["suites"]
    if path is None:
        raw = _data_file("paper_suites.json").read_text(encoding="utf-8")
        source = "awmtrace/data/suites/paper_suites.json"
    else:
        p = Path(path).expanduser()
        try:
            raw = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputNotFound(f"{p}: cannot read the suites file ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise FormatError(f"{p}: not a text file (expected a JSON suites file)") from None
        source = str(p)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{source}: not valid JSON ({exc})") from None
    return _parse_suites(data, source, meta)


def get_suite(name: str, path: str | Path | None = None) -> Suite:
    """One suite by name; an unknown name lists the known ones."""
    suites = load_suites(path)
    if name not in suites:
        raise UsageError(f"unknown suite {name!r}; known suites: {', '.join(suites)}")
    return suites[name]


def shipped_data_digests() -> dict[str, tuple[str, str]]:
    """``{file: (sha256 recorded in suites_meta.json, sha256 of the shipped file)}``."""
    out = {}
    for name, info in _meta()["files"].items():
        out[name] = (str(info["sha256"]), hashlib.sha256(_data_file(name).read_bytes()).hexdigest())
    return out


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's |z| table (display names as the paper prints them)."""

    category: str
    base: str
    offspring: str
    huref_abs_z: float | None
    reef_abs_z: float | None
    awm_abs_z: float | None


@dataclass(frozen=True)
class PaperMatch:
    """How a suite pair lines up with the paper's table."""

    row: PaperRow | None
    base: str  # suite short names, base and offspring as the match decided
    offspring: str
    note: str | None = None


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=1)
def load_paper_zscores() -> tuple[PaperRow, ...]:
    """The rows of ``data/suites/paper_abs_zscores.csv``."""
    text = _data_file("paper_abs_zscores.csv").read_text(encoding="utf-8")
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        rows.append(PaperRow(r["category"], r["base"], r["offspring"], _num(r["huref_abs_z"]), _num(r["reef_abs_z"]), _num(r["awm_abs_z"])))
    return tuple(rows)


def _norm(name: str | None) -> str:
    return re.sub(r"[^a-z0-9]", "", (name or "").lower())


def _aliases(suite: Suite, model: str) -> set[str]:
    repo = suite.models.get(model)
    names = {_norm(model)}
    if repo:
        names.add(_norm(repo.split("/")[-1]))
    return names


def match_paper(suite: Suite, a: str, b: str, rows: Iterable[PaperRow] | None = None) -> PaperMatch:
    """Find the paper's row for pair ``(a, b)``: same category, offspring equal to one side (see data/suites/README.md)."""
    rows = load_paper_zscores() if rows is None else tuple(rows)
    for offspring, base in ((b, a), (a, b)):
        names = _aliases(suite, offspring)
        hits = [r for r in rows if r.category == suite.category and _norm(r.offspring) in names]
        if len(hits) == 1:
            row = hits[0]
            base_names = _aliases(suite, base)
            agrees = any(n.startswith(_norm(row.base)) for n in base_names) and _norm(row.base) != ""
            note = None if agrees else f"the paper lists {row.offspring} under base {row.base}"
            return PaperMatch(row, base, offspring, note)
    return PaperMatch(None, a, b)


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

    Raises :class:`InputNotFound` (no repo id, or fetching off) or
    :class:`awmtrace.errors.HubError` (the Hub refused, offline and not cached).
    """
    tried: list[Path] = []
    if models_dir is not None:
        root = Path(models_dir).expanduser()
        candidates = [root / name]
        if repo_id:
            candidates += [root / repo_id.split("@")[0].split("/")[-1], root / repo_id.split("@")[0]]
        for c in candidates:
            if c.exists():
                return c
            tried.append(c)
    looked = f" (looked for {', '.join(str(t) for t in dict.fromkeys(tried))})" if tried else ""
    if repo_id is None:
        raise InputNotFound(f"{name}: not found locally{looked} and the suite gives no Hub repo id; put it in --models-dir as {name}/")
    if not fetch:
        raise InputNotFound(f"{name}: not found locally{looked} and fetching from the Hub is off")
    from awmtrace.io import hub

    return hub.ensure_local(repo_id, progress, ffn=ffn)


def _null_identity(null: Any) -> tuple[Any, dict[str, Any]]:
    from awmtrace.nulls import load_null
    from awmtrace.types import NullModel

    model = null if isinstance(null, NullModel) else load_null(null)
    scores_digest = hashlib.sha256(json.dumps(list(model.scores)).encode()).hexdigest()[:16]
    return model, {"name": model.name, "mean": model.mean, "std": model.std, "n": model.n, "scores": scores_digest}


def run_suite(
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
    from awmtrace import __version__
    from awmtrace.pipeline import (
        MIN_SHARED_TOKENS,
        Model,
        _parse_weights,
        compare_models,
        open_model,
        wants_ffn,
    )

    s = get_suite(suite, suites_file) if isinstance(suite, str) else suite
    kinds = _parse_weights(weights)
    null_model, null_id = _null_identity(null)
    min_tokens = MIN_SHARED_TOKENS if min_shared_tokens is None else int(min_shared_tokens)
    from awmtrace.pipeline import ALIGN_CHOICES

    if align not in ALIGN_CHOICES:
        raise UsageError(f"align must be one of {', '.join(ALIGN_CHOICES)}, got {align!r}")
    options = {"weights": list(kinds), "align": align, "min_shared_tokens": min_tokens, "null": null_id}
    ffn = wants_ffn(kinds)
    progress = progress or (lambda stage, done, total: None)
    notify = on_pair or (lambda outcome: None)

    owned = not isinstance(store, ResultsStore)
    db = ResultsStore(store) if owned else store
    uses = Counter(m for pair in s.pairs for m in pair)
    located: dict[str, Path | AwmError] = {}
    fingerprints: dict[str, str] = {}
    opened: dict[str, Model | AwmError] = {}
    missing: dict[str, str] = {}
    outcomes: list[PairOutcome] = []

    def find(name: str) -> Path | AwmError:
        if name not in located:
            try:
                located[name] = locate_model(name, s.repo_of(name), models_dir, fetch=fetch, ffn=ffn, progress=progress)
            except AwmError as exc:
                located[name] = exc
                missing[name] = str(exc)
                log.info("%s: model %s is missing: %s", s.name, name, exc)
        return located[name]

    def model(name: str) -> Model:
        if name not in opened:
            path = located[name]
            assert isinstance(path, Path)
            try:
                opened[name] = open_model(path, progress)
            except AwmError as exc:
                opened[name] = exc
        m = opened[name]
        if isinstance(m, AwmError):
            raise m
        return m

    def release(name: str) -> None:
        uses[name] -= 1
        if uses[name] <= 0 and name in opened:
            m = opened.pop(name)
            if not isinstance(m, AwmError):
                m.close()

    try:
        total = len(s.pairs)
        for i, (a, b) in enumerate(s.pairs, start=1):
            try:
                outcome = _run_pair(s, i, total, a, b, find, model, fingerprints, options, db, __version__,
                                    lambda ma, mb: compare_models(ma, mb, weights=kinds, align=align, device=device,
                                                                  null=null_model, min_shared_tokens=min_tokens,
                                                                  progress=progress))  # fmt: skip
            finally:
                release(a)
                release(b)
            outcomes.append(outcome)
            notify(outcome)
    finally:
        for m in opened.values():
            if not isinstance(m, AwmError):
                m.close()
        if owned:
            db.close()
    return SuiteRun(s, str(db.path), tuple(outcomes), missing)


def _run_pair(
    s: Suite,
    i: int,
    total: int,
    a: str,
    b: str,
    find: Callable[[str], Path | AwmError],
    model: Callable[[str], Any],
    fingerprints: dict[str, str],
    options: dict[str, Any],
    db: ResultsStore,
    version: str,
    compare: Callable[[Any, Any], Any],
) -> PairOutcome:
    paths = {n: find(n) for n in (a, b)}
    lost = [n for n, p in paths.items() if isinstance(p, AwmError)]
    if lost:
        return PairOutcome(i, total, a, b, "missing", message="; ".join(f"{n}: {paths[n]}" for n in lost), missing_models=tuple(lost))
    for n, p in paths.items():
        if n not in fingerprints:
            assert isinstance(p, Path)
            fingerprints[n] = model_fingerprint(p)
    key = record_key(s.name, a, b, fingerprints[a], fingerprints[b], options, version)
    if db.has(key):
        return PairOutcome(i, total, a, b, "skipped", db.get(key), "already in the store")
    try:
        result = compare(model(a), model(b))
    except AwmError as exc:
        log.info("%s: %s vs %s failed: %s", s.name, a, b, exc)
        return PairOutcome(i, total, a, b, "failed", message=str(exc))
    record = StoredRecord.create(
        suite=s.name, name_a=a, name_b=b, result=result, label=s.label, category=s.category,
        spec_a=str(paths[a]), spec_b=str(paths[b]), fingerprint_a=fingerprints[a], fingerprint_b=fingerprints[b],
        options=options, tool_version=version,
    )  # fmt: skip
    if record.key != key:
        raise StoreError(f"{db.path}: internal error: record key {record.key[:12]} differs from the planned {key[:12]}")
    db.put(record)
    return PairOutcome(i, total, a, b, "done", record)


@dataclass(frozen=True)
class ReportRow:
    """One pair of a suite report; numbers are ``None`` when the pair has no stored result."""

    suite: str
    category: str
    label: str
    name_a: str
    name_b: str
    base: str
    offspring: str
    status: str  # "done" | "not run"
    score_q: float | None = None
    score_k: float | None = None
    score: float | None = None
    z: float | None = None
    p_value: float | None = None
    p_holm: float | None = None  # Holm-adjusted over the pairs of the report that have results
    verdict: str | None = None
    paper_abs_z: float | None = None
    paper_note: str | None = None
    tool_version: str | None = None
    created_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "category": self.category,
            "label": self.label,
            "a": self.name_a,
            "b": self.name_b,
            "base": self.base,
            "offspring": self.offspring,
            "status": self.status,
            "score_q": self.score_q,
            "score_k": self.score_k,
            "score": self.score,
            "z": self.z,
            "abs_z": abs(self.z) if self.z is not None else None,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "verdict": self.verdict,
            "paper_abs_z": self.paper_abs_z,
            "paper_note": self.paper_note,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
        }


def suite_report(
    suite: str | Suite,
    store: ResultsStore | str | Path = DEFAULT_STORE,
    *,
    suites_file: str | Path | None = None,
    null: NullModel | None = None,
) -> list[ReportRow]:
    """The paper-style table of ``suite``: one row per pair, from the newest stored result of each.

    Rows follow the suite's order; base/offspring follow the paper where its
    table has the pair (``paper_abs_z``), else the suite's order. With
    ``null``, z and the verdict are recomputed from the stored scores under
    that null (no weights are read); otherwise they are as stored.
    """
    s = get_suite(suite, suites_file) if isinstance(suite, str) else suite
    owned = not isinstance(store, ResultsStore)
    db = ResultsStore(store, create=False) if owned else store
    try:
        rows = []
        for a, b in s.pairs:
            match = match_paper(s, a, b)
            rec = db.latest(s.name, a, b)
            common: dict[str, Any] = {
                "suite": s.name, "category": s.category, "label": s.label, "name_a": a, "name_b": b,
                "base": match.base, "offspring": match.offspring,
                "paper_abs_z": match.row.awm_abs_z if match.row else None, "paper_note": match.note,
            }  # fmt: skip
            if rec is None:
                rows.append(ReportRow(status="not run", **common))
                continue
            r = rec.result if null is None else rescore(rec.result, null)
            rows.append(
                ReportRow(
                    status="done",
                    score_q=r.get("score_q"),
                    score_k=r.get("score_k"),
                    score=r.get("score"),
                    z=r.get("z"),
                    p_value=r.get("p_value"),
                    verdict=(r.get("verdict") or {}).get("label"),
                    tool_version=rec.tool_version,
                    created_at=rec.created_at,
                    **common,
                )
            )
        tested = [i for i, row in enumerate(rows) if row.p_value is not None]
        if tested:
            holm = adjust_p_values([rows[i].p_value for i in tested], "holm")
            for i, p in zip(tested, holm, strict=True):
                rows[i] = replace(rows[i], p_holm=float(p))
        return rows
    finally:
        if owned:
            db.close()
