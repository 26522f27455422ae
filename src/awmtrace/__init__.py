"""awmtrace: tell whether one LLM was derived from another from their weights alone (AWM).

Public API::

    compare(a, b, options=None, **kwargs) -> PairResult  # paths or Hub ids; a CompareOptions or keywords
    compare_many(pairs, options=None, **kwargs) -> list[PairResult]
    open_model(path) -> Model                # lazy: headers only
    matrix(models, **options) -> MatrixResult  # every pair, families, lineage tree
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awmtrace._version import __version__
from awmtrace.pipeline import CompareOptions, compare, compare_many, open_model
from awmtrace.types import PairResult

if TYPE_CHECKING:
    from awmtrace.collections.matrix import MatrixResult


def matrix(models: Iterable[str | Path], **options: Any) -> MatrixResult:
    """Every pair of ``models``: scores, families, lineage tree; see :func:`awmtrace.collections.matrix.matrix`.

    Imported on first use, so that ``import awmtrace`` (and every ``awm`` command) does not load networkx.
    """
    from awmtrace.collections.matrix import matrix as _matrix

    return _matrix(models, **options)


__all__ = ["__version__", "CompareOptions", "compare", "compare_many", "open_model", "matrix", "PairResult"]
