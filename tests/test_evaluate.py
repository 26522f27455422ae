"""ROC / AUC / pAUC / thresholds on hand-worked examples (ties included), loading, and ``awm evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace.cli import main
from awmtrace.errors import FormatError, InputNotFound, StatsError
from awmtrace.evaluate import (
    PairEntry,
    auc,
    auc_mann_whitney,
    best_threshold,
    evaluate,
    load_labels,
    load_pairs,
    mcclish,
    partial_auc,
    roc_curve,
    tpr_at_fpr,
)
from awmtrace.types import NullModel

PNG = b"\x89PNG\r\n\x1a\n"

# The worked example: related scores 0.9, 0.7, 0.5; independent 0.7, 0.4, 0.1, 0.05.
POS = [0.9, 0.7, 0.5]
NEG = [0.7, 0.4, 0.1, 0.05]
SCORES = np.array(POS + NEG)
LABELS = np.array([True] * 3 + [False] * 4)


def test_roc_points_with_a_tie_by_hand() -> None:
    fpr, tpr, thr = roc_curve(SCORES, LABELS)
    # Thresholds (descending distinct scores) and counts of scores >= threshold:
    #   +inf: TP 0 FP 0 -> (0, 0)
    #   0.9 : TP 1 FP 0 -> (0, 1/3)
    #   0.7 : TP 2 FP 1 -> (1/4, 2/3)   the 0.7 tie moves the curve diagonally
    #   0.5 : TP 3 FP 1 -> (1/4, 1)
    #   0.4, 0.1, 0.05 -> (2/4, 1), (3/4, 1), (1, 1)
    assert fpr == pytest.approx([0, 0, 0.25, 0.25, 0.5, 0.75, 1.0])
    assert tpr == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1, 1])
    assert thr[0] == np.inf and thr[1:] == pytest.approx([0.9, 0.7, 0.5, 0.4, 0.1, 0.05])


def test_auc_by_hand_and_by_counting() -> None:
    # Pairs (pos, neg): 0.9 beats all 4; 0.7 beats 3 and ties 1 (counts 1/2); 0.5 beats 3.
    # (4 + 3.5 + 3) / (3 * 4) = 10.5 / 12 = 0.875
    fpr, tpr, _ = roc_curve(SCORES, LABELS)
    # Trapezoids: 0.25 * (1/3 + 2/3) / 2 = 0.125, then three 0.25 * 1 strips: 0.875.
    assert auc(fpr, tpr) == pytest.approx(0.875)
    assert auc_mann_whitney(SCORES, LABELS) == pytest.approx(0.875)


def test_partial_auc_by_hand() -> None:
    fpr, tpr, _ = roc_curve(SCORES, LABELS)
    # Up to FPR 0.1: the segment (0, 1/3) -> (0.25, 2/3) is cut at 0.1, where
    # TPR = 1/3 + (1/3) * 0.1 / 0.25 = 1.4/3; area = 0.1 * (1/3 + 1.4/3) / 2 = 0.04.
    raw = partial_auc(fpr, tpr, 0.1)
    assert raw == pytest.approx(0.04)
    # McClish: chance area 0.1^2 / 2 = 0.005, perfect 0.1:
    # 0.5 * (1 + (0.04 - 0.005) / (0.1 - 0.005)) = 0.5 * (1 + 0.368421) = 0.6842105
    assert mcclish(raw, 0.1) == pytest.approx(0.6842105, abs=1e-7)
    # Whole range: pAUC(1) is the AUC, and McClish(., 1) maps it to itself.
    assert partial_auc(fpr, tpr, 1.0) == pytest.approx(0.875)
    assert mcclish(0.875, 1.0) == pytest.approx(0.875)


def test_ties_everywhere_and_reversed_scores() -> None:
    # All four scores equal: the ROC is the diagonal (0,0) -> (1,1); AUC 1/2.
    fpr, tpr, _ = roc_curve([0.5] * 4, [True, True, False, False])
    assert fpr == pytest.approx([0, 1]) and tpr == pytest.approx([0, 1])
    assert auc(fpr, tpr) == 0.5 == auc_mann_whitney([0.5] * 4, [True, True, False, False])
    # pAUC at 0.05 of the diagonal: 0.05^2 / 2 = 0.00125, exactly chance -> McClish 0.5.
    assert partial_auc(fpr, tpr, 0.05) == pytest.approx(0.00125)
    assert mcclish(0.00125, 0.05) == pytest.approx(0.5)
    # Every related pair below every independent one: AUC 0, raw pAUC 0,
    # McClish 0.5 * (1 - 0.00125 / 0.04875) = 0.4871795.
    fpr, tpr, _ = roc_curve([0.1, 0.9], [True, False])
    assert auc(fpr, tpr) == 0.0 and partial_auc(fpr, tpr, 0.05) == 0.0
    assert mcclish(0.0, 0.05) == pytest.approx(0.4871795, abs=1e-7)


def test_trapezoid_auc_equals_the_mann_whitney_count_on_random_tied_scores() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(4, 40))
        scores = rng.integers(0, 6, n) / 5.0  # heavy ties
        labels = rng.random(n) < 0.5
        labels[0], labels[1] = True, False
        fpr, tpr, _ = roc_curve(scores, labels)
        assert auc(fpr, tpr) == pytest.approx(auc_mann_whitney(scores, labels), abs=1e-12)


def test_tpr_at_fpr_and_best_threshold_by_hand() -> None:
    fpr, tpr, thr = roc_curve(SCORES, LABELS)
    # FPR <= 0.1 reachable only at FPR 0: best TPR 1/3 at threshold 0.9.
    assert tpr_at_fpr(fpr, tpr, thr, 0.1) == pytest.approx((1 / 3, 0.0, 0.9))
    # FPR <= 0.25: TPR 1 at threshold 0.5.
    assert tpr_at_fpr(fpr, tpr, thr, 0.25) == pytest.approx((1.0, 0.25, 0.5))
    # Overlap (margin 0.5 - 0.7 = -0.2). Youden J = TPR - FPR: 0.9 -> 1/3, 0.7 -> 2/3 - 1/4 = 0.4167,
    # 0.5 -> 1 - 1/4 = 0.75 (best), 0.4 -> 0.5.
    best = best_threshold(SCORES, LABELS)
    assert best["margin"] == pytest.approx(-0.2) and not best["separable"]
    assert best["threshold"] == 0.5 and best["tpr"] == 1.0 and best["fpr"] == 0.25
    # Separable: margin 0.8 - 0.3 = 0.5, threshold at the midpoint 0.55.
    sep = best_threshold([0.9, 0.8, 0.1, 0.3], [True, True, False, False])
    assert sep["separable"] and sep["margin"] == pytest.approx(0.5) and sep["threshold"] == pytest.approx(0.55)
    assert sep["tpr"] == 1.0 and sep["fpr"] == 0.0


def test_single_class_is_refused() -> None:
    with pytest.raises(StatsError, match="0 independent"):
        roc_curve([0.9, 0.8], [True, True])


def _entry(a: str, b: str, score: float, label: str | None, suite: str | None = "s", z: float | None = None) -> PairEntry:
    result = {
        "score": score,
        "z": (score - 0.00375) / 0.0028 if z is None else z,
        "p_value": 0.5,
        "verdict": {"label": "related" if score > 0.5 else "independent"},
        "null": {"name": "paper-independent-90", "mean": 0.00375, "std": 0.0028},
        "alignment": {"hidden_size_a": 64, "hidden_size_b": 64},
        "layer_matching": {"n_layers_a": 4, "n_layers_b": 4},
    }
    return PairEntry(a, b, result, label, suite)


def _worked_entries() -> list[PairEntry]:
    return [_entry(f"p{i}", "base", s, "related") for i, s in enumerate(POS)] + [
        _entry(f"n{i}", "other", s, "independent") for i, s in enumerate(NEG)
    ]


def test_evaluate_reports_the_worked_example() -> None:
    ev = evaluate(_worked_entries(), max_fpr=0.1, fpr_target=0.1)
    assert (ev.n_related, ev.n_independent) == (3, 4)
    assert ev.auc == pytest.approx(0.875)
    assert ev.pauc_raw == pytest.approx(0.04) and ev.pauc_normalized == pytest.approx(0.4)
    assert ev.pauc == pytest.approx(0.6842105, abs=1e-7)
    assert ev.tpr_at_fpr == pytest.approx(1 / 3)
    assert ev.threshold["threshold"] == 0.5 and ev.threshold["margin"] == pytest.approx(-0.2)
    # threshold in z under the shared null: (0.5 - 0.00375) / 0.0028 = 177.232
    assert ev.threshold["z"] == pytest.approx(177.232143, abs=1e-5)
    table = ev.z_table
    assert [r["a"] for r in table] == ["p0", "p1", "p2"]  # strongest |z| first
    assert all(r["label"] == "related" for r in table)
    # All 7 p-values are 0.5; Holm multiplies the smallest by 7 -> capped at 1.
    assert all(r["p_holm"] == 1.0 for r in ev.pairs)
    assert ev.multiple_comparisons["m"] == 7 and "7 pairs" in ev.multiple_comparisons["note"]
    assert ev.verdict_counts["independent"] == {"related": 1, "independent": 3}
    d = ev.to_dict()
    assert d["roc"]["thresholds"][0] is None and "McClish" in d["pauc_definition"]
    json.dumps(d, allow_nan=False)


def test_evaluate_labels_file_overrides_skips_and_notes(tmp_path: Path) -> None:
    entries = _worked_entries()
    entries.append(_entry("x", "y", 0.3, None))  # no label anywhere: left out with a note
    entries.append(_entry("p0", "base", 0.95, "related"))  # stored again: the last one counts
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("a,b,label\nother,n3,related\nghost,pair,independent\n")  # reversed order matches
    ev = evaluate(entries, load_labels(labels_csv))
    assert (ev.n_related, ev.n_independent) == (4, 3)
    assert any("1 pair(s) without a label" in n and "x vs y" in n for n in ev.notes)
    assert any("ghost vs pair" in n for n in ev.notes)
    assert any("repeated" in n for n in ev.notes)
    assert max(r["score"] for r in ev.pairs if r["a"] == "p0") == 0.95


def test_evaluate_refuses_one_class_and_no_labels() -> None:
    with pytest.raises(StatsError, match="all 3 labelled pairs are related"):
        evaluate([_entry(f"p{i}", "b", s, "related") for i, s in enumerate(POS)])
    with pytest.raises(StatsError, match="--labels"):
        evaluate([_entry("a", "b", 0.9, None), _entry("a", "c", 0.1, None)])
    with pytest.raises(StatsError, match="no results"):
        evaluate([])


def test_evaluate_rescores_under_another_null() -> None:
    null = NullModel("tight", mean=0.0, std=0.1, n=3, scores=(-0.1, 0.0, 0.1))
    ev = evaluate(_worked_entries(), null=null)
    top = ev.z_table[0]
    assert top["z"] == pytest.approx(9.0) and top["p_empirical"] == pytest.approx(0.25)  # (0 + 1) / (3 + 1)
    assert ev.null is not None and ev.null["name"] == "tight"
    assert ev.threshold["null"] == "tight"


def test_labels_file_formats_and_errors(tmp_path: Path) -> None:
    j = tmp_path / "labels.json"
    j.write_text(json.dumps({"pairs": [{"a": "A", "b": "B", "label": 1}, {"a": "A", "b": "C", "label": "negative"}]}))
    assert load_labels(j) == {("A", "B"): "related", ("A", "C"): "independent"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\nA,B,maybe\n")
    with pytest.raises(FormatError, match="bad.csv: line 2.*maybe"):
        load_labels(bad)
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("x,y\n1,2\n")
    with pytest.raises(FormatError, match="a, b and label"):
        load_labels(nohead)
    with pytest.raises(InputNotFound):
        load_labels(tmp_path / "none.csv")


def _items() -> list[dict[str, object]]:
    return [{"name_a": e.name_a, "name_b": e.name_b, "label": e.label, "suite": e.suite, "result": e.result} for e in _worked_entries()]


def test_load_pairs_reads_json_lists_lines_and_demo_output(tmp_path: Path) -> None:
    as_list = tmp_path / "r.json"
    as_list.write_text(json.dumps(_items()))
    as_lines = tmp_path / "r.jsonl"
    as_lines.write_text("\n".join(json.dumps(i) for i in _items()) + "\n\n")
    for path in (as_list, as_lines):
        pairs = load_pairs(path)
        assert len(pairs) == 7 and pairs[0].label == "related" and pairs[0].score == 0.9
    bare = tmp_path / "bare.json"  # `awm compare --json` output carrying labels at top level
    bare.write_text(
        json.dumps([{**i["result"], "a": {"spec": "A"}, "b": {"spec": f"B{n}"}, "label": i["label"]} for n, i in enumerate(_items())])
    )
    assert {p.name_a for p in load_pairs(bare)} == {"A"}
    demo = tmp_path / "demo.json"  # `awm demo --json`
    demo.write_text(
        json.dumps([{"member": "kid", "relation": "x", "expected_related": True, "result": {"score": 0.9, "a": {"spec": "base"}}}])
    )
    (p,) = load_pairs(demo)
    assert (p.name_a, p.name_b, p.label) == ("base", "kid", "related")
    assert len(load_pairs(as_list, suites=["s"])) == 7
    with pytest.raises(StatsError, match="no results of suite"):
        load_pairs(as_list, suites=["other"])


def test_load_pairs_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(StatsError, match="empty.json: empty"):
        load_pairs(empty)
    (tmp_path / "empty_list.json").write_text("[]")
    with pytest.raises(StatsError, match="empty list"):
        load_pairs(tmp_path / "empty_list.json")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"score": 0.1, "a": {"spec": "x"}, "b": {"spec": "y"}}\n{oops\n')
    with pytest.raises(FormatError, match="broken.jsonl: line 2"):
        load_pairs(broken)
    noscore = tmp_path / "noscore.json"
    noscore.write_text(json.dumps([{"result": {"score": "high"}, "name_a": "a", "name_b": "b"}]))
    with pytest.raises(FormatError, match="finite numeric 'score'"):
        load_pairs(noscore)
    with pytest.raises(InputNotFound):
        load_pairs(tmp_path / "missing.json")
    with pytest.raises(InputNotFound, match="folder"):
        load_pairs(tmp_path)


def test_load_pairs_from_a_store_like_object() -> None:
    recs = [
        SimpleNamespace(
            suite=e.suite, name_a=e.name_a, name_b=e.name_b, label=e.label, category="SFT", result=e.result,
            tool_version="0.1.0", created_at="t",
        )
        for e in _worked_entries()
    ]  # fmt: skip
    store = SimpleNamespace(records=lambda suite=None: recs, path="fake.sqlite")
    pairs = load_pairs(store)
    assert len(pairs) == 7 and pairs[0].category == "SFT"
    empty = SimpleNamespace(records=lambda suite=None: [], path="empty.sqlite")
    with pytest.raises(StatsError, match="empty.sqlite: holds no results"):
        load_pairs(empty)


def test_load_pairs_from_a_real_results_store(tmp_path: Path) -> None:
    from awmtrace.store import ResultsStore, StoredRecord

    path = tmp_path / "results.sqlite"
    with ResultsStore(path, create=True) as store:
        for e in _worked_entries():
            store.put(StoredRecord.create(name_a=e.name_a, name_b=e.name_b, result=e.result, suite=e.suite, label=e.label, category="SFT"))
    ev = evaluate(load_pairs(path))
    assert ev.auc == pytest.approx(0.875)
    r = CliRunner().invoke(main, ["evaluate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["auc"] == pytest.approx(0.875)
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty, create=True).close()
    r = CliRunner().invoke(main, ["evaluate", str(empty)])
    assert r.exit_code == 3 and "holds no results" in r.output and "Traceback" not in r.output


def test_evaluate_cli_writes_figures_and_tables(tmp_path: Path) -> None:
    src = tmp_path / "results.json"
    src.write_text(json.dumps(_items()))
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(src), "-o", str(out), "--max-fpr", "0.1", "--fpr-target", "0.1"])
    assert r.exit_code == 0, r.output
    assert "0.8750" in r.stdout and "0.6842" in r.stdout  # AUC and McClish pAUC of the worked example
    assert "|z| of related pairs" in r.stdout and "7 pairs tested at once" in r.stdout
    for name in ("roc.png", "scores.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["auc"] == pytest.approx(0.875) and saved["pauc_raw"] == pytest.approx(0.04)
    csv_lines = (out / "z_table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("suite,category,a,b,score,z,abs_z") and len(csv_lines) == 4
    r = CliRunner().invoke(main, ["evaluate", str(src), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n_related"] == 3


def test_evaluate_cli_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    one = tmp_path / "one.json"
    one.write_text(json.dumps([i for i in _items() if i["label"] == "related"]))
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps([{**i, "label": None} for i in _items()]))
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"format": "awmtrace-null", "mean": 0.0, "std": 0.0, "n": 90}))
    src = tmp_path / "ok.json"
    src.write_text(json.dumps(_items()))
    cases = [
        ([str(empty)], "empty file, no results"),  # not just "empty": the path echoes that word
        ([str(one)], "all 3 labelled pairs are related"),
        ([str(unlabelled)], "--labels"),
        ([str(src), "--null", str(flat)], "no variance"),
        ([str(tmp_path / "nothing.json")], "nothing.json: no such results store"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, ["evaluate", *args])
        assert r.exit_code == 3, (args, r.output)
        assert message in r.output and "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output


_GOOD = {"score": 0.01, "a": {"spec": "x"}, "b": {"spec": "y"}, "label": "independent", "z": 1.0}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**_GOOD, "suite": ["s"]}, "item 1: field 'suite' should be text, found list"),
        ({**_GOOD, "name_a": {"x": 1}}, "item 1: field 'name_a' should be text, found dict"),
        ({**_GOOD, "tool": "zz"}, "item 1: field 'tool' should be an object, found 'zz'"),
        ({**_GOOD, "null": "paper"}, "item 1: field 'null' should be an object, found 'paper'"),
        ({**_GOOD, "verdict": "yes"}, "item 1: field 'verdict' should be an object, found 'yes'"),
        ({**_GOOD, "verdict": {"label": "x", "thresholds": {"related": "5"}}}, "field 'verdict.thresholds' should be an object of numbers"),
        ({**_GOOD, "z": "high"}, "item 1: field 'z' should be a number or null, found 'high'"),
        ({**_GOOD, "alignment": {"hidden_size_a": "big"}}, "field 'alignment.hidden_size_a' should be a number"),
        ({**_GOOD, "a": "x"}, "item 1: field 'a' should be an object, found 'x'"),
        ("[" * 50_000, "nested too deeply"),
    ],
)
@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_malformed_results_files_name_the_file_and_field(tmp_path: Path, command: str, item: object, message: str) -> None:
    bad = tmp_path / "results.json"
    other = {**_GOOD, "a": {"spec": "p"}, "b": {"spec": "q"}, "score": 0.02}
    bad.write_text(item if isinstance(item, str) else json.dumps([item, other]))
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pairs(bad)
    args = ["calibrate", "--from", str(bad), "-o", str(tmp_path / "null.json")] if command == "calibrate" else ["evaluate", str(bad)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    assert " ".join(r.output.split()).startswith(f"error: {bad}:") and message in " ".join(r.output.split()), r.output
