"""awmtrace: tell whether one LLM was derived from another from their weights alone (AWM).

Public API::

    compare(a, b, **options) -> PairResult   # paths or Hub ids
    compare_many(pairs, **options) -> list[PairResult]
    open_model(path) -> Model                # lazy: headers only
"""

from awmtrace._version import __version__
from awmtrace.pipeline import compare, compare_many, open_model
from awmtrace.types import PairResult

__all__ = ["__version__", "compare", "compare_many", "open_model", "PairResult"]
