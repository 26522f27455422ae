"""Suite definitions: named lists of model pairs with the label their pairs are expected to have.

The paper's nine suites ship as ``data/suites/paper_suites.json`` (the paper's
``configs.py``), their categories and labels in ``suites_meta.json``, and the
paper's per-pair |z| in ``paper_abs_zscores.csv``. A suites file of one's own
has the shape documented in ``data/suites/README.md``::

    {"suites": {NAME: {"models": {short: repo_id_or_null}, "pairs": [[a, b], ...],
                       "label": "related" | "independent", "category": ...}}}

``label`` is required (it is the truth ``evaluate`` and ``calibrate`` use);
``category`` is optional.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from awmtrace.errors import FormatError, InputNotFound, UsageError

__all__ = [
    "Suite",
    "PaperRow",
    "PaperMatch",
    "LABELS",
    "load_suites",
    "get_suite",
    "shipped_data_digests",
    "load_paper_zscores",
    "match_paper",
]

LABELS = ("related", "independent")


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


def _suite_models(name: str, entry: dict[str, Any], bad: Callable[[str], FormatError]) -> dict[str, str | None]:
    models: dict[str, str | None] = {}
    for short, repo in entry["models"].items():
        if repo is not None and not isinstance(repo, str):
            raise bad(f"suite {name!r}: model {short!r} has a repo id that is not a string")
        models[str(short)] = repo
    return models


def _suite_pairs(
    name: str, entry: dict[str, Any], models: dict[str, str | None], bad: Callable[[str], FormatError]
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for pair in entry["pairs"]:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise bad(f"suite {name!r}: pair {pair!r} is not two model names")
        unknown = [p for p in pair if p not in models]
        if unknown:
            raise bad(f"suite {name!r}: pair {list(pair)} names {', '.join(unknown)}, which 'models' does not list")
        pairs.append((pair[0], pair[1]))
    return pairs


def _parse_suites(data: Any, source: str, meta: dict[str, Any]) -> dict[str, Suite]:
    def bad(problem: str) -> FormatError:
        return FormatError(
            f'{source}: {problem} (expected {{"suites": {{NAME: {{"models": {{...}}, "pairs": [[a, b], ...], '
            '"label": "related" | "independent"}}}}}}; see awmtrace/data/suites/README.md)'
        )

    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise bad("no 'suites' object")
    out: dict[str, Suite] = {}
    for name, entry in data["suites"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("models"), dict) or not isinstance(entry.get("pairs"), list):
            raise bad(f"suite {name!r} needs 'models' (object) and 'pairs' (list)")
        models = _suite_models(name, entry, bad)
        pairs = _suite_pairs(name, entry, models, bad)
        known = meta.get(name, {})
        label = entry.get("label") or known.get("label")
        if label is None:
            raise bad(
                f'suite {name!r} has no \'label\': say what its pairs are expected to be, "related" or "independent" '
                "(evaluate and calibrate use it as the truth)"
            )
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
    except RecursionError:
        raise FormatError(f"{source}: JSON nested too deeply to be a suites file") from None
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
