"""The JSON result schema: its version (``schema_version`` in every result) and strict-JSON helpers.

Bump the version when a field changes meaning or disappears; adding fields does not.
"""

from __future__ import annotations

import math
from typing import Any

from awmtrace.types import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "finite_json"]


def finite_json(obj: Any) -> Any:
    """A copy of ``obj`` with NaN/Inf floats as ``None``, so it serialises as strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


#: Commands whose ``--json`` output has a published schema (``awmtrace/data/schemas/<name>.schema.json``, draft 2020-12).
SCHEMAS = (
    "compare",
    "inspect",
    "demo",
    "suite-run",
    "suite-report",
    "suite-list",
    "suite-show",
    "evaluate",
    "calibrate",
    "fetch",
    "stress",
    "matrix",
)


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one command's ``--json`` output, e.g. ``load_schema("compare")``."""
    import json
    from importlib import resources

    if name not in SCHEMAS:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(SCHEMAS)}")
    text = (resources.files("awmtrace.data") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
