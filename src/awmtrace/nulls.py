"""Null distributions as data files with provenance.

A null file is JSON: ``format: "awmtrace-null"``, ``name``, ``mean``, ``std``,
``n``, ``scores`` (raw per-pair scores, possibly empty) and ``provenance``.
The default is the paper's published summary, shipped in ``data/nulls/``.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from awmtrace.errors import InputNotFound, StatsError
from awmtrace.types import NullModel

__all__ = ["DEFAULT_NULL", "load_null", "null_from_dict", "null_to_dict"]

DEFAULT_NULL = "paper"
NULL_FORMAT = "awmtrace-null"
NULL_FORMAT_VERSION = 1


def null_from_dict(data: dict[str, Any], source: str) -> NullModel:
    """Validate a parsed null file and build a :class:`NullModel`."""
    if not isinstance(data, dict) or data.get("format") != NULL_FORMAT:
        raise StatsError(f"{source}: not an awmtrace null file (expected \"format\": \"{NULL_FORMAT}\")")
    if int(data.get("format_version", 0)) > NULL_FORMAT_VERSION:
        raise StatsError(
            f"{source}: null file format {data.get('format_version')} is newer than this awmtrace "
            f"understands ({NULL_FORMAT_VERSION}); upgrade awmtrace"
        )
    try:
        scores = tuple(float(s) for s in data.get("scores") or ())
        mean = float(data["mean"])
        std = float(data["std"])
        n = int(data.get("n", len(scores)))
    except (KeyError, TypeError, ValueError) as exc:
        raise StatsError(f"{source}: null file needs numeric 'mean', 'std' and 'n' ({exc})") from None
    if not all(math.isfinite(v) for v in (mean, std, *scores)):
        raise StatsError(f"{source}: null file holds NaN or Inf")
    if not std > 0:
        raise StatsError(f"{source}: null has no variance (std={std}); z-scores would be undefined")
    return NullModel(
        name=str(data.get("name", Path(source).stem)),
        mean=mean,
        std=std,
        n=n,
        scores=scores,
        provenance=dict(data.get("provenance") or {}),
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
    if not path.is_file():
        raise InputNotFound(f"null file {path} does not exist (shipped nulls: {', '.join(shipped_nulls())})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatsError(f"{path}: cannot read null file: {exc}") from None
    return null_from_dict(data, str(path))


def shipped_nulls() -> list[str]:
    folder = resources.files("awmtrace.data") / "nulls"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))
