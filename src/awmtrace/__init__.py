"""awmtrace: tell whether one LLM was derived from another from their weights alone (AWM).

Public API::

    compare(a, b, **options) -> PairResult   # paths or Hub ids
    compare_many(pairs, **options) -> list[PairResult]
    open_model(path) -> Model                # lazy: headers only
"""

__version__ = "0.1.0"

from awmtrace.pipeline import compare, compare_many, open_model  # noqa: E402
from awmtrace.types import PairResult  # noqa: E402

__all__ = ["__version__", "compare", "compare_many", "open_model", "PairResult"]
