"""Numbers and values for people: the one home of the formatting rules the CLI, HTML, figures and tables share.

Absent values (``None``, NaN, infinities) print as ``missing`` (``n/a`` by
default, ``-`` in dense tables), never as ``None`` or ``nan``; booleans print
as ``yes``/``no``, never ``True``/``False``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_p", "fmt_num", "fmt_bytes", "fmt_value", "yes_no", "is_number"]


def is_number(x: Any) -> bool:
    """A finite int or float (bools excluded)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_p(p: Any, missing: str = "n/a") -> str:
    """A p-value: 3 significant digits, ``< 1e-300`` once the normal tail underflows, ``missing`` when absent."""
    if not is_number(p):
        return missing
    return f"{p:.3g}" if p >= 1e-300 else "< 1e-300"


def fmt_num(x: Any, digits: int = 4, missing: str = "n/a") -> str:
    """A fixed-point number with ``digits`` decimals; ``missing`` when absent or not finite."""
    if isinstance(x, bool):
        return yes_no(x)
    if not is_number(x):
        return missing if x is None or isinstance(x, float | int) else str(x)
    return f"{x:.{digits}f}"


def fmt_bytes(n: float) -> str:
    """``1.23 GB`` style (powers of 1000, as the Hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover - the loop returns at TB


def yes_no(x: Any) -> str:
    return "yes" if x else "no"


def fmt_value(x: Any, missing: str = "-") -> str:
    """Any metadata value as text: ``yes``/``no`` for booleans, ``missing`` for ``None``, numbers as they are."""
    if x is None:
        return missing
    if isinstance(x, bool):
        return yes_no(x)
    if isinstance(x, float) and not math.isfinite(x):
        return missing
    if isinstance(x, list | tuple):
        return ", ".join(fmt_value(v, missing) for v in x) or missing
    return str(x)
