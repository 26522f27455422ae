"""Stored results as labelled pairs: from a results store, or a JSON / JSON-lines results file, and labels files.

A results file holds bare results (``PairResult.to_dict()``), store records
with a ``result`` field, or the output of ``awm demo --json``; as one JSON
value (a list, an object, or ``{"results": [...]}``) or one JSON value per
line. Every field that later steps read is checked here, so a damaged file
fails with the file, the item and the field named.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awmtrace.errors import FormatError, InputNotFound, StatsError
from awmtrace.store import ResultsStore, is_sqlite_file

__all__ = ["PairEntry", "normalize_label", "load_pairs", "load_labels", "check_result"]

_POSITIVE = {"related", "positive", "pos", "1", "true", "yes", "derived"}
_NEGATIVE = {"independent", "unrelated", "negative", "neg", "0", "false", "no"}
# Fields of a result that later steps read, by the JSON type they must have (or be null).
_RESULT_OBJECTS = ("a", "b", "tool", "null", "verdict", "alignment", "layer_matching")
_RESULT_NUMBERS = ("z", "p_value", "p_empirical", "score_q", "score_k")
_NESTED_NUMBERS = {
    "null": ("mean", "std"),
    "alignment": ("hidden_size_a", "hidden_size_b"),
    "layer_matching": ("n_layers_a", "n_layers_b"),
}
_META_TEXT = ("suite", "category", "name_a", "name_b", "member", "tool_version", "created_at")


@dataclass(frozen=True)
class PairEntry:
    """One stored comparison, whatever file it came from. ``result`` is ``PairResult.to_dict()``."""

    name_a: str
    name_b: str
    result: dict[str, Any]
    label: str | None = None  # "related" | "independent" | None
    suite: str | None = None
    category: str | None = None
    tool_version: str = ""
    created_at: str | None = None

    @property
    def score(self) -> float:
        return float(self.result["score"])

    @property
    def pair(self) -> str:
        return f"{self.name_a} vs {self.name_b}"


def normalize_label(value: Any, where: str) -> str:
    """``related`` or ``independent`` from the spellings people use (1/0, true/false, positive/negative)."""
    text = str(value).strip().lower()
    if isinstance(value, bool):
        text = "true" if value else "false"
    if text in _POSITIVE:
        return "related"
    if text in _NEGATIVE:
        return "independent"
    raise FormatError(f"{where}: label {value!r} is neither related (1, positive) nor independent (0, negative)")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _wrong(where: str, field: str, expected: str, found: Any) -> FormatError:
    shown = repr(found) if isinstance(found, str | int | float | bool) else type(found).__name__
    return FormatError(f"{where}: field '{field}' should be {expected}, found {shown}")


def _check_objects(result: dict[str, Any], where: str) -> None:
    for key in _RESULT_OBJECTS:
        value = result.get(key)
        if value is not None and not isinstance(value, dict):
            raise _wrong(where, key, "an object", value)
    for key, fields in _NESTED_NUMBERS.items():
        for sub in fields:
            value = (result.get(key) or {}).get(sub)
            if value is not None and not _is_number(value):
                raise _wrong(where, f"{key}.{sub}", "a number", value)
    verdict = result.get("verdict") or {}
    if verdict.get("label") is not None and not isinstance(verdict["label"], str):
        raise _wrong(where, "verdict.label", "text", verdict["label"])
    thresholds = verdict.get("thresholds")
    if thresholds is not None and not (isinstance(thresholds, dict) and all(_is_number(v) for v in thresholds.values())):
        raise _wrong(where, "verdict.thresholds", "an object of numbers", thresholds)


def check_result(result: Any, where: str) -> dict[str, Any]:
    """``result`` when it is a result object with a finite score and well-typed fields; :class:`FormatError` otherwise."""
    if not isinstance(result, dict):
        raise FormatError(f"{where}: expected a result object, found {type(result).__name__}")
    score = result.get("score")
    if not (isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)):
        raise FormatError(f"{where}: result has no finite numeric 'score' (found {score!r})")
    for key in _RESULT_NUMBERS:
        value = result.get(key)
        if value is not None and not _is_number(value):
            raise _wrong(where, key, "a number or null", value)
    _check_objects(result, where)
    return result


def _model_name(summary: Any) -> str | None:
    if isinstance(summary, dict):
        name = summary.get("spec") or summary.get("path")
        return str(name) if name else None
    return None


def _entry_from_item(item: Any, where: str) -> PairEntry:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: expected a JSON object, found {type(item).__name__}")
    if isinstance(item.get("result"), dict):
        result = check_result(item["result"], where)
    elif "score" in item:
        result = check_result(item, where)
    else:
        raise FormatError(f"{where}: neither a result (no 'score') nor a record with a 'result' object")
    for key in _META_TEXT:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise _wrong(where, key, "text", item[key])
    label = item.get("label")
    if label is None and isinstance(item.get("expected_related"), bool):  # `awm demo --json`
        label = item["expected_related"]
    name_a = item.get("name_a") or _model_name(result.get("a"))
    name_b = item.get("name_b") or item.get("member") or _model_name(result.get("b"))
    if not name_a or not name_b:
        raise FormatError(f"{where}: cannot tell which models were compared (no name_a/name_b and no a/b spec in the result)")
    tool = result.get("tool") or {}
    return PairEntry(
        name_a=str(name_a),
        name_b=str(name_b),
        result=result,
        label=None if label is None else normalize_label(label, where),
        suite=item.get("suite"),
        category=item.get("category"),
        tool_version=str(item.get("tool_version") or tool.get("version") or ""),
        created_at=item.get("created_at"),
    )


def _json_items(path: Path, text: str) -> tuple[list[Any], list[str]]:
    """The items of a results file and where each is (``path: item N`` or ``path: line N``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to be a results file") from None
    if data is not None:
        if isinstance(data, dict) and isinstance(data.get("results"), list):  # {"results": [...]}
            data = data["results"]
        items = data if isinstance(data, list) else [data]
        return items, [f"{path}: item {i + 1}" for i in range(len(items))]
    items, where = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: line {lineno} is not JSON ({exc.msg}); expected a JSON list or one result per line") from None
        except RecursionError:
            raise FormatError(f"{path}: line {lineno}: JSON nested too deeply to be a result") from None
        where.append(f"{path}: line {lineno}")
    return items, where


def _read_results_file(path: Path) -> list[PairEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a text file; expected a results store (SQLite), JSON or JSON lines") from None
    except OSError as exc:
        raise InputNotFound(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise StatsError(f"{path}: empty file, no results to read")
    items, where = _json_items(path, text.strip())
    if not items:
        raise StatsError(f"{path}: holds an empty list, no results to read")
    return [_entry_from_item(item, w) for item, w in zip(items, where, strict=True)]


def _from_store(store: Any) -> list[PairEntry]:
    out = []
    for rec in store.records():
        where = f"{getattr(store, 'path', 'store')}: {rec.name_a} vs {rec.name_b}"
        out.append(
            PairEntry(
                name_a=rec.name_a,
                name_b=rec.name_b,
                result=check_result(rec.result, where),
                label=None if rec.label is None else normalize_label(rec.label, where),
                suite=rec.suite,
                category=getattr(rec, "category", None),
                tool_version=str(getattr(rec, "tool_version", "") or ""),
                created_at=getattr(rec, "created_at", None),
            )
        )
    return out


def _entries_at(path: Path) -> list[PairEntry]:
    if path.is_dir():
        raise InputNotFound(f"{path}: is a folder; pass a results store (.sqlite) or a JSON / JSON-lines results file")
    if not path.is_file():
        raise InputNotFound(f"{path}: no such results store or results file")
    try:
        sqlite = is_sqlite_file(path)
    except OSError as exc:
        raise InputNotFound(f"{path}: cannot read ({exc.strerror or exc})") from None
    if sqlite:
        with ResultsStore(path, create=False) as store:
            return _from_store(store)
    return _read_results_file(path)


def load_pairs(source: Any, suites: Iterable[str] | None = None) -> list[PairEntry]:
    """Stored results as :class:`PairEntry` rows, from a results store or a results file.

    ``source``: a :class:`awmtrace.store.ResultsStore`, the path of one (an
    SQLite file), or a JSON / JSON-lines file. ``suites``: keep only these
    suites (for files, entries without a suite are kept only when no suite is
    asked for). The order is the store's (oldest first) or the file's.
    """
    wanted = set(suites or ())
    if hasattr(source, "records"):
        entries = _from_store(source)
        where = str(getattr(source, "path", "the results store"))
    else:
        path = Path(source).expanduser()
        where = str(path)
        entries = _entries_at(path)
    if not entries:
        raise StatsError(f"{where}: holds no results; run `awm suite run` (or `awm compare --json`) first")
    if wanted:
        kept = [e for e in entries if e.suite in wanted]
        if not kept:
            present = sorted({str(e.suite) for e in entries})
            raise StatsError(f"{where}: no results of suite(s) {', '.join(sorted(wanted))}; it holds {', '.join(present)}")
        entries = kept
    return entries


def _label_rows_json(path: Path, text: str) -> list[tuple[Any, Any, Any, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to be a labels file") from None
    items = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise FormatError(f'{path}: expected a list of {{"a", "b", "label"}} objects (or one under "pairs")')
    rows = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise FormatError(f"{path}: entry {i} is not an object with a, b and label")
        rows.append((item.get("a", item.get("name_a")), item.get("b", item.get("name_b")), item.get("label"), f"{path}: entry {i}"))
    return rows


def _label_rows_csv(path: Path, text: str) -> list[tuple[Any, Any, Any, str]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    col_a = fields.get("a") or fields.get("name_a")
    col_b = fields.get("b") or fields.get("name_b")
    col_l = fields.get("label")
    if not (col_a and col_b and col_l):
        raise FormatError(f"{path}: CSV header must name columns a, b and label (found {', '.join(reader.fieldnames or []) or 'none'})")
    return [(row.get(col_a), row.get(col_b), row.get(col_l), f"{path}: line {i}") for i, row in enumerate(reader, 2)]


def load_labels(path: str | Path) -> dict[tuple[str, str], str]:
    """A labels file: which pairs are related and which independent.

    CSV with a header naming columns ``a``, ``b``, ``label`` (or ``name_a``,
    ``name_b``), or JSON: a list of ``{"a": ..., "b": ..., "label": ...}``
    objects, optionally under ``"pairs"``. Labels: ``related``/``independent``
    (also 1/0, true/false, positive/negative).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFound(f"{path}: labels file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: labels file is not text (expected CSV or JSON)") from None
    is_json = text.lstrip().startswith(("[", "{"))
    rows = _label_rows_json(path, text) if is_json else _label_rows_csv(path, text)
    labels: dict[tuple[str, str], str] = {}
    for a, b, label, where in rows:
        if not a or not b or label is None or str(label).strip() == "":
            raise FormatError(f"{where}: needs a, b and label")
        labels[(str(a).strip(), str(b).strip())] = normalize_label(label, where)
    if not labels:
        raise FormatError(f"{path}: labels file lists no pairs")
    return labels
