"""The paper's experiment suites: named lists of model pairs, run into a results store, reported as the paper's table.

:mod:`~awmtrace.suites.definitions` loads suites (the paper's nine, or a
suites file of one's own; shape and label rules in ``data/suites/README.md``);
:mod:`~awmtrace.suites.running` finds each model in a models folder or on the
Hub, compares every pair and stores each result; :mod:`~awmtrace.suites.reporting`
turns stored results into the per-pair table with the paper's own |z| where
``data/suites/paper_abs_zscores.csv`` has the pair.
"""

from awmtrace.suites.definitions import (
    LABELS,
    PaperMatch,
    PaperRow,
    Suite,
    get_suite,
    load_paper_zscores,
    load_suites,
    match_paper,
    shipped_data_digests,
)
from awmtrace.suites.reporting import ReportRow, suite_report
from awmtrace.suites.running import ModelPool, PairOutcome, SuiteRun, locate_model, run_suite

__all__ = [
    "Suite",
    "PaperRow",
    "PaperMatch",
    "PairOutcome",
    "SuiteRun",
    "ReportRow",
    "ModelPool",
    "load_suites",
    "get_suite",
    "shipped_data_digests",
    "load_paper_zscores",
    "match_paper",
    "locate_model",
    "run_suite",
    "suite_report",
    "LABELS",
]
