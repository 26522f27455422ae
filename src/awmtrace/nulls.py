"""Null distributions as data files with provenance.

A null file is JSON: ``format: "awmtrace-null"``, ``name``, ``mean``, ``std``,
``n``, ``scores`` (raw per-pair scores, possibly empty) and ``provenance``
(which pairs, which tool version, where the numbers come from). The default is
the paper's published summary, shipped in ``data/nulls/``: it has no raw
scores, so it gives no empirical p-value. :func:`calibrate_null` builds a
null from stored results of independent pairs, raw scores included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from awmtrace._version import __version__
from awmtrace.errors import FormatError, InputNotFound, StatsError
from awmtrace.io.base import load_json
from awmtrace.types import NullModel

__all__ = [
    "DEFAULT_NULL",
    "load_null",
    "null_from_dict",
    "null_to_dict",
    "save_null",
    "calibrate_null",
    "shipped_nulls",
    "is_cross_size",
    "null_caveats",
    "alignment_method",
    "null_alignment_methods",
    "null_covers_alignment",
    "alignment_caveat",
]

DEFAULT_NULL = "paper"
NULL_FORMAT = "awmtrace-null"
NULL_FORMAT_VERSION = 1


def _number(data: dict[str, Any], key: str, source: str, default: Any = None) -> float:
    """A finite number from field ``key``, or a one-line :class:`StatsError` naming the file and the field."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StatsError(f"{source}: field {key!r} is {_shown(value)}; expected a finite number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise StatsError(f"{source}: field {key!r} is {_shown(value)}; expected a finite number") from None
    if not math.isfinite(number):
        raise StatsError(f"{source}: field {key!r} is {_shown(value)}, which is NaN or Inf; expected a finite number")
    return number


def _integer(data: dict[str, Any], key: str, source: str, default: int) -> int:
    number = _number(data, key, source, default)
    if not number.is_integer():
        raise StatsError(f"{source}: field {key!r} is {_shown(data.get(key))}; expected a whole number")
    return int(number)


def _shown(value: Any) -> str:
    text = repr(value) if value is not None else "missing"
    return text if len(text) <= 40 else text[:37] + "..."


def null_from_dict(data: dict[str, Any], source: str) -> NullModel:
    """Validate a parsed null file and build a :class:`NullModel`.

    Every malformed field (wrong type, not a number, not finite, overflowing)
    is a :class:`StatsError` naming ``source`` and the field.
    """
    if not isinstance(data, dict) or data.get("format") != NULL_FORMAT:
        raise StatsError(f'{source}: not an awmtrace null file (expected "format": "{NULL_FORMAT}")')
    if _integer(data, "format_version", source, 0) > NULL_FORMAT_VERSION:
        raise StatsError(
            f"{source}: null file format {data.get('format_version')} is newer than this awmtrace "
            f"understands ({NULL_FORMAT_VERSION}); upgrade awmtrace"
        )
    raw_scores = data.get("scores") or []
    if not isinstance(raw_scores, list):
        raise StatsError(f"{source}: field 'scores' is {_shown(raw_scores)}; expected a list of numbers")
    scores = tuple(_number({"scores": s}, "scores", source) for s in raw_scores)
    mean = _number(data, "mean", source)
    std = _number(data, "std", source)
    n = _integer(data, "n", source, len(scores))
    if not std > 0:
        raise StatsError(f"{source}: null has no variance (std={std}); z-scores would be undefined")
    if scores and n != len(scores):
        raise StatsError(f"{source}: 'n' is {n} but the file holds {len(scores)} raw scores; they must agree")
    if n < 2:
        raise StatsError(f"{source}: a null needs at least 2 pairs, found n={n}")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise StatsError(f"{source}: field 'provenance' is {_shown(provenance)}; expected an object")
    provenance = dict(provenance)
    if data.get("description") and "description" not in provenance:
        provenance["description"] = str(data["description"])
    return NullModel(
        name=str(data.get("name", Path(source).stem)),
        mean=mean,
        std=std,
        n=n,
        scores=scores,
        provenance=provenance,
        source=source,
    )


def null_to_dict(null: NullModel) -> dict[str, Any]:
    """The JSON form of a null file (inverse of :func:`null_from_dict`)."""
    return {
        "format": NULL_FORMAT,
        "format_version": NULL_FORMAT_VERSION,
        "name": null.name,
        "mean": null.mean,
        "std": null.std,
        "n": null.n,
        "scores": list(null.scores),
        "provenance": null.provenance,
    }


def load_null(spec: str | Path | None = None) -> NullModel:
    """Load a null by shipped name (``"paper"``) or from a JSON file path."""
    spec = DEFAULT_NULL if spec is None else spec
    shipped = resources.files("awmtrace.data") / "nulls" / f"{spec}.json"
    if isinstance(spec, str) and "/" not in spec and not spec.endswith(".json") and shipped.is_file():
        return null_from_dict(json.loads(shipped.read_text(encoding="utf-8")), f"awmtrace:nulls/{spec}")
    path = Path(spec)
    if path.is_dir():
        raise StatsError(f"{path}: is a folder, not a null file (a JSON file written by `awm calibrate`)")
    if not path.exists():
        raise InputNotFound(f"null file {path} does not exist (shipped nulls: {', '.join(shipped_nulls())})")
    try:
        data = load_json(path, "null file")
    except FormatError as exc:
        raise StatsError(str(exc)) from None
    return null_from_dict(data, str(path))


def shipped_nulls() -> list[str]:
    folder = resources.files("awmtrace.data") / "nulls"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def save_null(null: NullModel, path: str | Path) -> Path:
    """Write ``null`` as a null file (JSON) and return its path."""
    path = Path(path)
    path.write_text(json.dumps(null_to_dict(null), indent=2) + "\n", encoding="utf-8")
    return path


def is_cross_size(result: dict[str, Any]) -> bool:
    """Whether a stored result compared models of different width or depth.

    Such pairs take paths same-size pairs never take (rectangular hidden-dim
    alignment, LAP layer matching), both of which can only raise the score.
    """
    al = result.get("alignment") or {}
    lm = result.get("layer_matching") or {}
    widths = (al.get("hidden_size_a"), al.get("hidden_size_b"))
    depths = (lm.get("n_layers_a"), lm.get("n_layers_b"))
    return (None not in widths and widths[0] != widths[1]) or (None not in depths and depths[0] != depths[1])


def alignment_method(result: dict[str, Any]) -> str:
    """The dimension alignment a stored result used: ``"lap"`` or ``"orthogonal"``.

    Results from before orthogonal alignment existed say ``"vocab"``/``"ids"`` there (how tokens were matched); they are LAP.
    """
    method = str((result.get("alignment") or {}).get("method", "lap"))
    return "orthogonal" if method == "orthogonal" else "lap"


def null_alignment_methods(null: dict[str, Any]) -> list[str]:
    """Alignment methods the null's pairs were scored with (``null``: a ``NullModel.to_dict()``).

    Nulls that do not say (the paper's, and files calibrated before this field existed) were all LAP-aligned.
    """
    methods = (null.get("provenance") or {}).get("alignment_methods")
    if isinstance(methods, list) and methods:
        return sorted({str(m) for m in methods})
    return ["lap"]


def null_covers_alignment(null: dict[str, Any], method: str) -> bool:
    """Whether the null's pairs include scores made with this alignment ``method``."""
    return method in null_alignment_methods(null)


def alignment_caveat(null: dict[str, Any], method: str) -> str:
    return (
        f"this score used the {method} alignment, but the null '{null.get('name', '?')}' holds only "
        f"{'/'.join(null_alignment_methods(null))}-aligned pairs: a fitted rotation raises independent pairs a little "
        "(0.01-0.02 on real models), so read z with care, or calibrate a null from independent pairs scored with "
        f"--align {method} (awm calibrate)"
    )


def null_record(null: NullModel, method: str) -> tuple[dict[str, Any], str | None]:
    """The null as a result records it, with ``covers_alignment`` for ``method``, and the caveat when it does not cover it."""
    info = null.to_dict()
    info["covers_alignment"] = null_covers_alignment(info, method)
    return info, None if info["covers_alignment"] else alignment_caveat(info, method)


def calibrate_null(
    pairs: Iterable[Any],
    *,
    name: str | None = None,
    source: str | None = None,
    suites: Iterable[str] = (),
) -> NullModel:
    """A null from the stored results of independent pairs, raw scores and provenance included.

    ``pairs``: records with ``suite``, ``name_a``, ``name_b``, ``label``,
    ``result`` (a ``PairResult.to_dict()``) and ``tool_version`` (a
    :class:`awmtrace.store.StoredRecord` or :class:`awmtrace.evaluate.PairEntry`).
    Pairs labelled ``related`` are left out; when a pair is stored several
    times the last one counts. ``std`` is the sample standard deviation
    (``ddof=1``). Cross-size pairs are kept and listed.
    """
    chosen, n_related, n_seen = _independent_records(pairs)
    where = source or "the given results"
    if not chosen:
        extra = f" ({n_related} were labelled related)" if n_related else ""
        raise StatsError(f"{where}: no stored results of independent pairs to calibrate from{extra}; run an independent suite first")
    rows = [_calibration_row(rec, where) for rec in chosen.values()]
    scores = [r["score"] for r in rows]
    mean, std = _mean_std(scores, where)
    suite_names = sorted({str(r["suite"]) for r in rows if r["suite"] is not None} | set(suites))
    provenance = _calibration_provenance(
        rows, where, suite_names, excluded={"related": n_related, "repeated": n_seen - n_related - len(rows)}
    )
    default_name = "calibrated-" + "+".join(suite_names) if suite_names else "calibrated"
    return NullModel(
        name=name or default_name,
        mean=mean,
        std=std,
        n=len(scores),
        scores=tuple(scores),
        provenance=provenance,
        source=None,
    )


def _independent_records(pairs: Iterable[Any]) -> tuple[dict[tuple[Any, str, str], Any], int, int]:
    """``(records by (suite, a, b), n labelled related, n seen)``: the last record of each pair not labelled related."""
    chosen: dict[tuple[Any, str, str], Any] = {}
    n_related = n_seen = 0
    for rec in pairs:
        n_seen += 1
        if rec.label == "related":
            n_related += 1
            continue
        chosen[(rec.suite, rec.name_a, rec.name_b)] = rec
    return chosen, n_related, n_seen


def _calibration_row(rec: Any, where: str) -> dict[str, Any]:
    """One pair of a calibrated null's provenance: names, raw score, sizes, the awmtrace version that scored it."""
    score = (rec.result or {}).get("score")
    if not isinstance(score, int | float) or not math.isfinite(score):
        raise StatsError(f"{where}: result of {rec.name_a} vs {rec.name_b} has no finite score ({score!r})")
    al = rec.result.get("alignment") or {}
    lm = rec.result.get("layer_matching") or {}
    return {
        "alignment": alignment_method(rec.result),
        "suite": rec.suite,
        "a": rec.name_a,
        "b": rec.name_b,
        "score": float(score),
        "cross_size": is_cross_size(rec.result),
        "hidden_sizes": [al.get("hidden_size_a"), al.get("hidden_size_b")],
        "n_layers": [lm.get("n_layers_a"), lm.get("n_layers_b")],
        "tool_version": rec.tool_version,
    }


def _mean_std(scores: list[float], where: str) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of at least 2 scores that are not all equal."""
    if len(scores) < 2:
        raise StatsError(f"{where}: only {len(scores)} independent pair stored; a null needs at least 2 (the paper used 90)")
    mean = math.fsum(scores) / len(scores)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
    if not std > 0:
        raise StatsError(
            f"{where}: all {len(scores)} independent pairs score {scores[0]:.6g}; a null with no variance cannot give z-scores"
        )
    return mean, std


def _calibration_provenance(rows: list[dict[str, Any]], where: str, suite_names: list[str], excluded: dict[str, int]) -> dict[str, Any]:
    """What a calibrated null was built from, by which version and when, with caveats as ``notes``."""
    cross = [f"{r['a']} vs {r['b']}" for r in rows if r["cross_size"]]
    notes = []
    if len(rows) < 30:
        notes.append(f"only {len(rows)} pairs: the normal tail (z, p_value) is a long extrapolation; prefer the empirical p-value")
    versions = sorted({str(r["tool_version"]) for r in rows})
    if len(versions) > 1:
        notes.append(f"scores come from several awmtrace versions: {', '.join(versions)}")
    return {
        "kind": "calibrated from stored results of independent pairs",
        "built_by": f"awmtrace {__version__}",
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "from": where,
        "suites": suite_names,
        "tool_versions": versions,
        "std": "sample standard deviation (ddof=1) of the raw scores",
        "n_cross_size": len(cross),
        "cross_size_pairs": cross,
        "alignment_methods": sorted({str(r["alignment"]) for r in rows}),
        "pairs_cover": "same-size and cross-size pairs" if cross else "same-size pairs only",
        "excluded": excluded,
        "pairs": rows,
        "notes": notes,
    }


def null_caveats(result: dict[str, Any]) -> list[str]:
    """What the null behind a stored result cannot vouch for, one sentence each.

    No raw scores (so no empirical p-value), a cross-size pair judged by a
    null without cross-size pairs, and a z far beyond any null pair seen
    (the normal tail is then an extrapolation).
    """
    null = result.get("null") or {}
    prov = null.get("provenance") or {}
    out = []
    if not null.get("has_raw_scores"):
        out.append(
            f"the null '{null.get('name', '?')}' holds no raw per-pair scores, so there is no empirical p-value; "
            "p_value rests on a normal tail fitted to its mean and std"
        )
    else:
        res = null.get("empirical_resolution")
        if isinstance(res, int | float):
            out.append(f"the empirical p-value cannot go below 1/(n+1) = {res:.3g} with n = {null.get('n')} null pairs")
    covered = prov.get("n_cross_size")
    if is_cross_size(result) and not (isinstance(covered, int) and covered > 0):
        out.append(
            "this pair differs in width or depth (rectangular alignment / layer matching, which can only raise the "
            f"score), but the null '{null.get('name', '?')}' holds no such pairs: read z with care, or calibrate a "
            "null that includes cross-size independent pairs (awm calibrate)"
        )
    method = alignment_method(result)
    if not null_covers_alignment(null, method):
        out.append(alignment_caveat(null, method))
    z = result.get("z")
    n = null.get("n")
    if isinstance(z, int | float) and isinstance(n, int) and n > 0 and math.isfinite(z):
        # The largest z one expects among n normal draws is about sqrt(2 ln n).
        seen = math.sqrt(2.0 * math.log(max(n, 2)))
        if abs(z) > 2 * seen:
            out.append(
                f"|z| = {abs(z):.1f} is far beyond the ~{seen:.1f} the largest of {n} null pairs reaches: the normal-tail "
                "p_value is an extrapolation; it says 'far outside the null', not an exact probability"
            )
    return out
