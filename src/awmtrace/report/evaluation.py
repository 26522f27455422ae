"""The files an evaluation writes: ``evaluation.json``, ``z_table.csv``, ``roc.png`` and ``scores.png``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from awmtrace.errors import UsageError
from awmtrace.report.figures import plot_roc, plot_scores
from awmtrace.report.schema import finite_json

__all__ = ["write_evaluation"]


def write_evaluation(evaluation: Any, out_dir: str | Path) -> dict[str, Path]:
    """Write ``evaluation.json``, ``z_table.csv``, ``roc.png`` and ``scores.png`` of an
    :class:`awmtrace.evaluate.Evaluation` into ``out_dir``; the paths written, by kind."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; pass a folder for the evaluation outputs")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "evaluation": out / "evaluation.json",
        "z_table": out / "z_table.csv",
        "roc": out / "roc.png",
        "scores": out / "scores.png",
    }
    paths["evaluation"].write_text(json.dumps(finite_json(evaluation.to_dict()), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with paths["z_table"].open("w", newline="", encoding="utf-8") as fh:
        cols = ["suite", "category", "a", "b", "score", "z", "abs_z", "p_value", "p_holm", "p_empirical", "verdict", "cross_size"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in evaluation.z_table:
            w.writerow(row)
    plot_roc(evaluation, paths["roc"])
    plot_scores(evaluation, paths["scores"])
    return paths
