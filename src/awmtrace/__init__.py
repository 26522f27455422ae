"""awmtrace: tell whether one LLM was derived from another from their weights alone (AWM).

Public API::

    compare(a, b, **options) -> PairResult   # paths or Hub ids
    compare_many(pairs, **options) -> list[PairResult]
    open_model(path) -> Model                # lazy: headers only
    matrix(models, **options) -> MatrixResult  # every pair, families, lineage tree
"""

from __future__ import annotations

__version__ = "0.1.0"

from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from awmtrace.pipeline import compare, compare_many, open_model  # noqa: E402
from awmtrace.types import PairResult  # noqa: E402

if TYPE_CHECKING:
    from awmtrace.collections.matrix import MatrixResult


def matrix(models: Iterable[str | Path], **options: Any) -> MatrixResult:
    """Every pair of ``models``: scores, families, lineage tree; see :func:`awmtrace.collections.matrix.matrix`.

    Imported on first use, so that ``import awmtrace`` (and every ``awm`` command) does not load networkx.
    """
    from awmtrace.collections.matrix import matrix as _matrix

    return _matrix(models, **options)


__all__ = ["__version__", "compare", "compare_many", "open_model", "matrix", "PairResult"]
