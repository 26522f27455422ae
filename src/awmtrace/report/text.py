"""Numbers for people: the few formatting rules the CLI, HTML and tables share."""

from __future__ import annotations

from typing import Any

__all__ = ["fmt_p", "fmt_num"]


def fmt_p(p: Any) -> str:
    """A p-value: 3 significant digits, ``< 1e-300`` once the normal tail underflows, ``n/a`` when absent."""
    if isinstance(p, bool) or not isinstance(p, int | float):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-300 else "< 1e-300"


def fmt_num(x: Any, digits: int = 4) -> str:
    """A fixed-point number, ``n/a`` when absent."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "n/a" if x is None else str(x)
    return f"{x:.{digits}f}"
