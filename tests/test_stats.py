"""Statistics against hand-computed values: z, p, empirical p, verdicts, multiple comparisons, null files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace.cli import main
from awmtrace.core import stats
from awmtrace.errors import InputNotFound, StatsError, UsageError
from awmtrace.nulls import (
    calibrate_null,
    is_cross_size,
    load_null,
    null_caveats,
    null_from_dict,
    null_to_dict,
    save_null,
)
from awmtrace.types import NullModel

PAPER = NullModel("paper", mean=0.00375, std=0.0028, n=90)


def test_z_score_by_hand() -> None:
    # (0.0178 - 0.00375) / 0.0028 = 0.01405 / 0.0028 = 5.017857...
    assert stats.z_score(0.0178, PAPER) == pytest.approx(5.0178571, abs=1e-6)
    # A perfect copy: (1 - 0.00375) / 0.0028 = 355.80357 (the paper reports up to 355.27).
    assert stats.z_score(1.0, PAPER) == pytest.approx(355.80357, abs=1e-4)
    assert stats.z_score(0.00375, PAPER) == 0.0


def test_z_score_refuses_what_has_no_meaning() -> None:
    with pytest.raises(StatsError, match="no spread"):
        stats.z_score(0.5, NullModel("flat", 0.0, 0.0, 10))
    with pytest.raises(StatsError, match="not a finite"):
        stats.z_score(float("nan"), PAPER)


def test_normal_tail_p_values() -> None:
    # Standard normal upper tail: P(Z >= 0) = 1/2, P(Z >= 1.6448536) = 0.05,
    # P(Z >= 3) = 1.3499e-3, P(Z >= 5) = 2.8665e-7 (tables, e.g. Abramowitz & Stegun 26.2).
    assert stats.normal_p_value(0.0) == pytest.approx(0.5)
    assert stats.normal_p_value(1.6448536) == pytest.approx(0.05, rel=1e-6)
    assert stats.normal_p_value(3.0) == pytest.approx(1.349898e-3, rel=1e-5)
    assert stats.normal_p_value(5.0) == pytest.approx(2.866516e-7, rel=1e-5)
    assert stats.normal_p_value(400.0) == 0.0  # underflow: reported as "< 1e-300"


def test_empirical_p_value_counts_ties_and_has_a_floor() -> None:
    null = [0.1, 0.2, 0.3, 0.4]
    # score 0.3: k = 2 (0.3 ties count, and 0.4) -> (2 + 1) / (4 + 1) = 0.6
    assert stats.empirical_p_value(0.3, null) == pytest.approx(0.6)
    # above every null score: k = 0 -> 1/5, the resolution, never 0
    assert stats.empirical_p_value(0.9, null) == pytest.approx(0.2)
    assert stats.empirical_resolution(4) == pytest.approx(0.2)
    # below every null score: (4 + 1) / 5 = 1
    assert stats.empirical_p_value(-1.0, null) == 1.0
    assert stats.empirical_p_value(0.5, []) is None
    assert stats.empirical_resolution(0) is None


def test_verdict_boundaries_and_recorded_thresholds() -> None:
    assert stats.verdict(5.0).label == "related"  # at the threshold counts
    assert stats.verdict(4.999).label == "inconclusive"
    assert stats.verdict(3.0).label == "inconclusive"
    assert stats.verdict(2.999).label == "independent"
    v = stats.verdict(7.0, z_related=6.5, z_inconclusive=2.0)
    assert v.label == "related" and v.thresholds == {"related": 6.5, "inconclusive": 2.0}
    assert "z >= 6.5" in v.rule and v.to_dict()["thresholds"] == {"related": 6.5, "inconclusive": 2.0}
    with pytest.raises(UsageError, match="out of order"):
        stats.verdict(4.0, z_related=3.0, z_inconclusive=4.0)
    with pytest.raises(StatsError):
        stats.verdict(float("nan"))


def test_assess_and_rescore_use_only_the_stored_score() -> None:
    null = NullModel("mine", mean=0.1, std=0.1, n=4, scores=(0.0, 0.1, 0.15, 0.25))
    a = stats.assess(0.5, null)
    # z = (0.5 - 0.1) / 0.1 = 4 -> inconclusive; no null score >= 0.5 -> 1/5
    assert a.z == pytest.approx(4.0)
    assert a.verdict.label == "inconclusive"
    assert a.p_empirical == pytest.approx(0.2) and a.p_empirical_resolution == pytest.approx(0.2)
    stored = {"score": 0.5, "z": 177.0, "verdict": {"label": "related", "thresholds": {"related": 3.5, "inconclusive": 2.0}}, "layers": []}
    new = stats.rescore(stored, null)
    assert new["z"] == pytest.approx(4.0) and new["verdict"]["label"] == "related"  # stored thresholds reused
    assert new["null"]["name"] == "mine" and new["null"]["empirical_resolution"] == pytest.approx(0.2)
    assert new["p_empirical"] == pytest.approx(0.2)
    assert stored["z"] == 177.0  # the input is not modified
    with pytest.raises(StatsError, match="score"):
        stats.rescore({"z": 1.0}, null)


def test_holm_and_bonferroni_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Bonferroni: 4 p, capped at 1.
    assert stats.adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    # Holm: ascending 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04;
    # running maximum 0.02, 0.03, 0.06, 0.06; back in input order:
    assert stats.adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capping: 0.5 * 2 = 1.0, then max(1.0, 0.6) = 1.0
    assert stats.adjust_p_values([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.adjust_p_values([]).size == 0
    with pytest.raises(UsageError):
        stats.adjust_p_values(p, "bh")
    with pytest.raises(StatsError):
        stats.adjust_p_values([1.5])


def test_bonferroni_z_and_the_note() -> None:
    assert stats.bonferroni_z(1) == pytest.approx(1.6448536, abs=1e-6)  # one-sided 5%
    assert stats.bonferroni_z(10) == pytest.approx(2.5758293, abs=1e-6)  # 0.05 / 10 = 0.005
    assert stats.multiple_comparison_note(1) is None
    note = stats.multiple_comparison_note(6)
    assert note is not None and "6 pairs" in note and "z >= 2.39" in note and "stricter" in note
    # 6 * P(Z >= 5) = 6 * 2.8665e-7 = 1.7e-6
    assert "1.7e-06" in note
    loose = stats.multiple_comparison_note(1000, z_related=2.0)
    assert loose is not None and "looser" in loose and "Holm" in loose


def test_default_null_is_the_papers_published_summary() -> None:
    null = load_null()
    assert (null.mean, null.std, null.n) == (0.00375, 0.0028, 90)
    assert null.scores == () and null.to_dict()["has_raw_scores"] is False
    assert null.to_dict()["empirical_resolution"] is None
    assert "same-size pairs only" in null.provenance["pairs"]
    assert "not published" in null.provenance["raw_scores"]


def _null_dict(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "format": "awmtrace-null",
        "format_version": 1,
        "name": "t",
        "mean": 0.0,
        "std": 0.01,
        "n": 3,
        "scores": [0.0, 0.01, -0.01],
    }
    d.update(over)
    return d


def test_null_files_are_validated(tmp_path: Path) -> None:
    assert null_from_dict(_null_dict(), "x").n == 3
    with pytest.raises(StatsError, match="no variance"):
        null_from_dict(_null_dict(std=0.0), "x")
    with pytest.raises(StatsError, match="must agree"):
        null_from_dict(_null_dict(n=5), "x")
    with pytest.raises(StatsError, match="not an awmtrace null"):
        null_from_dict({"mean": 0, "std": 1}, "x")
    with pytest.raises(StatsError, match="NaN"):
        null_from_dict(_null_dict(mean=float("nan")), "x")
    with pytest.raises(StatsError, match="newer"):
        null_from_dict(_null_dict(format_version=99), "x")
    with pytest.raises(InputNotFound):
        load_null(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StatsError, match="bad.json"):
        load_null(bad)


def _rec(
    a: str,
    b: str,
    score: float,
    label: str | None = "independent",
    suite: str = "independent_pairs",
    ha: int = 64,
    hb: int = 64,
    la: int = 4,
    lb: int = 4,
) -> SimpleNamespace:
    result = {
        "score": score,
        "alignment": {"hidden_size_a": ha, "hidden_size_b": hb},
        "layer_matching": {"n_layers_a": la, "n_layers_b": lb, "method": "identity" if la == lb else "lap"},
    }
    return SimpleNamespace(suite=suite, name_a=a, name_b=b, label=label, result=result, tool_version="0.1.0")


def test_calibrate_null_by_hand(tmp_path: Path) -> None:
    records = [
        _rec("m1", "m2", 0.5),  # replaced by the later result of the same pair
        _rec("m1", "m2", 0.001),
        _rec("m1", "m3", 0.003, ha=64, hb=48),  # cross-size (width)
        _rec("m2", "m3", 0.008),
        _rec("base", "child", 0.9, label="related", suite="sft_pairs"),  # left out
    ]
    null = calibrate_null(records, source="store.sqlite")
    # scores 0.001, 0.003, 0.008: mean 0.004; deviations -0.003, -0.001, 0.004;
    # squares sum 26e-6; / (3 - 1) = 13e-6; std = sqrt(1.3e-5) = 0.0036055513
    assert null.n == 3 and null.mean == pytest.approx(0.004)
    assert null.std == pytest.approx(0.0036055513, rel=1e-8)
    assert sorted(null.scores) == pytest.approx([0.001, 0.003, 0.008])
    prov = null.provenance
    assert prov["n_cross_size"] == 1 and prov["cross_size_pairs"] == ["m1 vs m3"]
    assert prov["excluded"] == {"related": 1, "repeated": 1}
    assert prov["suites"] == ["independent_pairs"] and prov["tool_versions"] == ["0.1.0"]
    assert any("extrapolation" in n for n in prov["notes"])  # n < 30
    assert null.name == "calibrated-independent_pairs"
    path = save_null(null, tmp_path / "null.json")
    again = load_null(path)
    assert again.scores == null.scores and again.std == null.std and again.provenance["n_cross_size"] == 1
    assert null_to_dict(again)["format"] == "awmtrace-null"


def test_calibrate_null_refuses_what_cannot_be_a_null() -> None:
    with pytest.raises(StatsError, match="no stored results of independent pairs.*1 were labelled related"):
        calibrate_null([_rec("a", "b", 0.9, label="related")])
    with pytest.raises(StatsError, match="at least 2"):
        calibrate_null([_rec("a", "b", 0.01)])
    with pytest.raises(StatsError, match="no variance"):
        calibrate_null([_rec("a", "b", 0.01), _rec("a", "c", 0.01)])


def test_cross_size_and_caveats() -> None:
    assert not is_cross_size(_rec("a", "b", 0.0).result)
    assert is_cross_size(_rec("a", "b", 0.0, la=4, lb=3).result)
    result = {**_rec("a", "b", 1.0, la=4, lb=3).result, "z": 355.8, "null": load_null().to_dict()}
    caveats = null_caveats(result)
    assert any("no raw per-pair scores" in c for c in caveats)
    assert any("differs in width or depth" in c for c in caveats)
    assert any("extrapolation" in c for c in caveats)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _results_file(path: Path, scores: list[tuple[str, str, float, str]]) -> Path:
    items = [
        {"name_a": a, "name_b": b, "label": label, "suite": "independent_pairs" if label == "independent" else "sft_pairs",
         "result": {"score": s, "z": (s - 0.00375) / 0.0028, "layers": [], "alignment": {}, "layer_matching": {}}}
        for a, b, s, label in scores
    ]  # fmt: skip
    path.write_text(json.dumps(items))
    return path


def test_calibrate_cli_writes_a_null_that_compare_uses(tmp_path: Path, family: dict[str, Path]) -> None:
    rng = np.random.default_rng(3)
    rows = [(f"m{i}", f"m{i + 1}", float(s), "independent") for i, s in enumerate(rng.normal(0.0, 0.003, 20))]
    rows.append(("base", "child", 0.97, "related"))
    src = _results_file(tmp_path / "results.json", rows)
    out = tmp_path / "null.json"
    r = invoke("calibrate", "--from", str(src), "--suite", "independent_pairs", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "20" in r.stdout and out.is_file()
    null = json.loads(out.read_text())
    assert null["n"] == 20 and len(null["scores"]) == 20
    assert null["mean"] == pytest.approx(float(np.mean([s for *_, s, lab in rows if lab == "independent"])))
    r = invoke("compare", str(family["base"]), str(family["independent"]), "--null", str(out), "--json", "-q")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["null"]["name"] == "calibrated-independent_pairs" and d["null"]["has_raw_scores"] is True
    assert d["p_empirical"] is not None and d["p_empirical"] >= 1 / 21  # the resolution of 20 raw scores
    assert d["null"]["empirical_resolution"] == pytest.approx(1 / 21)
    assert d["verdict"]["thresholds"] == {"related": 5.0, "inconclusive": 3.0, "permutation": 10.0}
    assert math.isclose(d["z"], (d["score"] - null["mean"]) / null["std"], rel_tol=1e-9)


def test_cli_errors_are_one_line(tmp_path: Path, family: dict[str, Path]) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(_null_dict(std=0.0)))
    r = invoke("compare", str(family["base"]), str(family["drift"]), "--null", str(flat), "-q")
    assert r.exit_code == 3 and "no variance" in r.output and "Traceback" not in r.output
    same = _results_file(tmp_path / "same.json", [("a", "b", 0.01, "independent"), ("a", "c", 0.01, "independent")])
    r = invoke("calibrate", "--from", str(same), "-o", str(tmp_path / "n.json"))
    assert r.exit_code == 3 and "no variance" in r.output and r.output.count("\n") <= 2
    r = invoke("calibrate", "--from", str(tmp_path / "nope.sqlite"), "-o", str(tmp_path / "n.json"))
    assert r.exit_code == 3 and "nope.sqlite" in r.output
    r = invoke("calibrate", "--from", str(same), "--suite", "sft_pairs", "-o", str(tmp_path / "n.json"))
    assert r.exit_code == 3 and "sft_pairs" in r.output
    assert not (tmp_path / "n.json").exists()


def test_size_aware_check_holds_back_a_tiny_independent_pair() -> None:
    # The probe of the issue: hidden 32, score 0.06 -> z ~ 20 under the 7B null, but the permutation
    # sd at 32 samples is sqrt(2 / (32 * 29)) = 0.0464, so the score is only 1.3 sd out: not related.
    a = stats.assess(0.06, PAPER, n_samples=32)
    assert a.z == pytest.approx((0.06 - 0.00375) / 0.0028) and a.null_label == "related"
    assert a.permutation is not None
    assert a.permutation.sd == pytest.approx(math.sqrt(2 / (32 * 29)))
    assert a.permutation.z == pytest.approx(0.06 / math.sqrt(2 / (32 * 29)))
    assert a.permutation.p_bound == pytest.approx(1 / (1 + a.permutation.z**2))
    assert not a.permutation.passed and a.exact_sd_could_change
    v = a.verdict.to_dict()
    assert v["label"] == "inconclusive" and v["decided_by"] == "permutation" and v["null"] == "paper"
    assert v["thresholds"] == {"related": 5.0, "inconclusive": 3.0, "permutation": 10.0}
    assert v["permutation"]["n_samples"] == 32 and v["permutation"]["sd_kind"] == "bound" and not v["permutation"]["passed"]
    assert "permutation z >= 10" in v["rule"]


def test_size_aware_check_lets_strong_and_large_pairs_through() -> None:
    big = stats.assess(0.05, PAPER, n_samples=4096)  # 7B-sized: the permutation sd is 3.5e-4
    assert big.verdict.label == "related" and big.verdict.decided_by == "null" and big.permutation and big.permutation.passed
    copy16 = stats.assess(1.0, PAPER, n_samples=16)  # a perfect copy at 16 samples: z_perm = sqrt(104) > 10
    assert copy16.verdict.label == "related"
    assert stats.assess(1.0, PAPER, n_samples=15).verdict.label == "inconclusive"  # sqrt(90) < 10: nothing is related below 16
    low = stats.assess(0.001, PAPER, n_samples=32)  # the null already says independent: the check changes nothing
    assert low.verdict.label == "independent" and low.verdict.decided_by == "null" and not low.exact_sd_could_change
    # An exact sd (from within-model layer similarities) smaller than the bound can pass what the bound refused.
    sd, kind = stats.permutation_sd(32, np.eye(8), np.eye(8))
    assert kind == "exact" and sd == pytest.approx(math.sqrt(2 / (32 * 29) / 8))
    exact = stats.assess(0.4, PAPER, n_samples=32, permutation=(sd, kind))
    assert stats.assess(0.4, PAPER, n_samples=32).verdict.label == "inconclusive" and exact.verdict.label == "related"
    assert not exact.exact_sd_could_change
    # Identical layers everywhere: the exact sd equals the bound.
    assert stats.permutation_sd(32, np.ones((4, 4)), np.ones((4, 4)))[0] == pytest.approx(math.sqrt(2 / (32 * 29)))
    with pytest.raises(StatsError, match="at least 4 hidden dimensions"):
        stats.assess(0.5, PAPER, n_samples=3)
    with pytest.raises(StatsError, match="square"):
        stats.permutation_sd(32, np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(UsageError, match="permutation threshold"):
        stats.assess(0.5, PAPER, n_samples=32, z_permutation=0.0)
    # Without a size there is no check, and the verdict says so.
    none = stats.assess(0.06, PAPER)
    assert none.permutation is None and none.verdict.label == "related" and "no size-aware check" in none.verdict.rule


def test_rescore_keeps_the_size_aware_check() -> None:
    stored = stats.assess(0.06, PAPER, n_samples=32)
    result = {"score": 0.06, "verdict": stored.verdict.to_dict(), "a": {"hidden_size": 64}, "b": {"hidden_size": 32}}
    lenient = NullModel("lenient", mean=0.0, std=0.001, n=10)
    out = stats.rescore(result, lenient)
    assert out["verdict"]["label"] == "inconclusive" and out["verdict"]["decided_by"] == "permutation"
    assert out["verdict"]["permutation"]["n_samples"] == 32 and out["verdict"]["null"] == "lenient"
    # Older results without the check: the smaller hidden size gives it; damaged fields are ignored.
    old = {
        "score": 0.06,
        "verdict": {"label": "related", "permutation": {"n_samples": "x"}},
        "a": {"hidden_size": 32},
        "b": {"hidden_size": 48},
    }
    assert stats.rescore(old, lenient)["verdict"]["permutation"]["n_samples"] == 32
    bare = stats.rescore({"score": 0.06, "a": "?", "b": None}, lenient)
    assert bare["verdict"]["label"] == "related" and bare["verdict"]["permutation"] is None
    # An exact sd stored with the result is reused.
    exact = stats.assess(0.4, PAPER, n_samples=32, permutation=stats.permutation_sd(32, np.eye(8), np.eye(8)))
    again = stats.rescore({"score": 0.4, "verdict": exact.verdict.to_dict()}, PAPER)
    assert again["verdict"]["label"] == "related" and again["verdict"]["permutation"]["sd_kind"] == "exact"
