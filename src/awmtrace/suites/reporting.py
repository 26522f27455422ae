"""Suite reports: the paper-style per-pair table from stored results, with the paper's own |z| where it has the pair."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from awmtrace.core.stats import adjust_p_values, rescore
from awmtrace.store import DEFAULT_STORE, ResultsStore
from awmtrace.suites.definitions import Suite, get_suite, match_paper
from awmtrace.types import NullModel

__all__ = ["ReportRow", "suite_report"]


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
    if isinstance(store, ResultsStore):
        rows = [_row(s, a, b, store, null) for a, b in s.pairs]
    else:
        with ResultsStore(store, create=False) as db:
            rows = [_row(s, a, b, db, null) for a, b in s.pairs]
    tested = [i for i, row in enumerate(rows) if row.p_value is not None]
    if tested:
        holm = adjust_p_values([float(rows[i].p_value or 0.0) for i in tested], "holm")
        for i, p in zip(tested, holm, strict=True):
            rows[i] = replace(rows[i], p_holm=float(p))
    return rows


def _row(s: Suite, a: str, b: str, db: ResultsStore, null: NullModel | None) -> ReportRow:
    """Pair ``(a, b)`` of ``s`` from its newest stored result (``status="not run"`` without one)."""
    match = match_paper(s, a, b)
    rec = db.latest(s.name, a, b)
    common: dict[str, Any] = {
        "suite": s.name, "category": s.category, "label": s.label, "name_a": a, "name_b": b,
        "base": match.base, "offspring": match.offspring,
        "paper_abs_z": match.row.awm_abs_z if match.row else None, "paper_note": match.note,
    }  # fmt: skip
    if rec is None:
        return ReportRow(status="not run", **common)
    r = rec.result if null is None else rescore(rec.result, null)
    return ReportRow(
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
