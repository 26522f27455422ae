"""The linear assignment solver (scipy's), imported when a LAP first runs.

Importing ``scipy.optimize`` takes about 0.4 s, which every process would pay at start-up (every
``awm`` command, every worker of ``awm matrix``); most of them never solve an assignment.
"""

from __future__ import annotations

import numpy as np

__all__ = ["linear_sum_assignment"]


def linear_sum_assignment(cost: np.ndarray, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.optimize.linear_sum_assignment(cost, maximize=maximize)``: row and column indices of an optimal assignment."""
    from scipy.optimize import linear_sum_assignment as solve

    rows, cols = solve(cost, maximize=maximize)
    return rows, cols
