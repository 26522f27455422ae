"""Experiment suites: the shipped definitions, running into a store, reporting."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import FormatError, UsageError
from awmtrace.store import ResultsStore
from awmtrace.suites import (
    get_suite,
    load_suites,
    match_paper,
    run_suite,
    shipped_data_digests,
    suite_report,
)

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import serving

PAPER_COUNTS = {
    "sft_pairs": 10,
    "cpt_pairs": 10,
    "rl_pairs": 10,
    "multimodal_pairs": 10,
    "pruning_pairs": 10,
    "all_moe_pairs": 10,
    "sft_13b_7b_pairs": 16,
    "independent_pairs": 45,
    "independent_pairs_13b": 45,
}


def test_the_nine_paper_suites_are_shipped_unchanged() -> None:
    suites = load_suites()
    assert {n: len(s.pairs) for n, s in suites.items()} == PAPER_COUNTS
    assert {s.category for s in suites.values()} == {
        "SFT", "CPT", "RL post-training", "Multimodal tuning", "Pruning", "MoE Upcycling", "independent",
    }  # fmt: skip
    assert [n for n, s in suites.items() if s.label == "independent"] == ["independent_pairs", "independent_pairs_13b"]
    assert suites["independent_pairs"].models_without_repo == ["openllama_7b", "OLMo-7B"]
    assert all(not s.models_without_repo for n, s in suites.items() if n != "independent_pairs")
    for name, (recorded, actual) in shipped_data_digests().items():
        assert recorded == actual, f"{name} differs from the copy recorded in suites_meta.json"


def test_paper_rows_are_matched_by_offspring() -> None:
    suites = load_suites()
    matched = {n: sum(match_paper(s, a, b).row is not None for a, b in s.pairs) for n, s in suites.items()}
    assert matched == {
        "sft_pairs": 10, "cpt_pairs": 10, "rl_pairs": 9, "multimodal_pairs": 10, "pruning_pairs": 10,
        "all_moe_pairs": 9, "sft_13b_7b_pairs": 10, "independent_pairs": 0, "independent_pairs_13b": 0,
    }  # fmt: skip
    sft = suites["sft_pairs"]
    m = match_paper(sft, "llama-2-7b", "vicuna-7b-v1.5")
    assert m.row is not None and m.row.awm_abs_z == 355.09 and m.note is None
    guanaco = match_paper(sft, "llama-2-7b", "llama-2-7b-guanaco")
    assert guanaco.row is not None and "Llama2-13B" in (guanaco.note or "")
    pruned = match_paper(suites["pruning_pairs"], "Llama-3.2-1B", "Llama-3-8B")
    assert (pruned.base, pruned.offspring, pruned.row.awm_abs_z if pruned.row else None) == ("Llama-3-8B", "Llama-3.2-1B", 12.14)
    dpo = match_paper(suites["rl_pairs"], "Llama-3-8B", "LLaMA3-iterative-DPO")
    assert dpo.row is not None and dpo.row.offspring == "LLaMA3-iterative-DPO-final"
    assert match_paper(suites["all_moe_pairs"], "Mistral-7B", "Mixtral-8x7B").row is None


def test_suite_list_and_show_on_the_command_line() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["suite", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert {s["name"]: s["n_pairs"] for s in json.loads(res.output)["suites"]} == PAPER_COUNTS
    res = runner.invoke(main, ["suite", "show", "independent_pairs", "--json"])
    data = json.loads(res.output)
    assert data["label"] == "independent" and len(data["pairs"]) == 45
    assert data["models"]["OLMo-7B"] is None and data["pairs"][0]["repo_a"] == "mosaicml/mpt-7b"
    res = runner.invoke(main, ["suite", "show", "independent_pairs"])
    assert res.exit_code == 0 and "not given by the paper" in res.output and "mosaicml/mpt-7b" in res.output
    res = runner.invoke(main, ["suite", "list"])
    assert res.exit_code == 0 and "independent_pairs_13b" in res.output
    res = runner.invoke(main, ["suite", "show", "sft_pair"])
    assert res.exit_code == 2 and "unknown suite 'sft_pair'" in res.output and "sft_pairs" in res.output


def test_bad_suites_files_give_one_line_errors(tmp_path: Path) -> None:
    cases = {
        "notjson.json": "{not json",
        "nosuites.json": '{"x": 1}',
        "badpair.json": '{"suites": {"s": {"models": {"a": null}, "pairs": [["a", "b"]]}}}',
        "badlabel.json": '{"suites": {"s": {"models": {"a": null}, "pairs": [], "label": "maybe"}}}',
        "nolabel.json": '{"suites": {"s": {"models": {"a": null, "b": null}, "pairs": [["a", "b"]]}}}',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(FormatError) as info:
            load_suites(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
        if name == "nolabel.json":  # never silently "related": the label is the truth evaluate and calibrate use
            assert "suite 's' has no 'label'" in str(info.value) and '"related" or "independent"' in str(info.value)
    with pytest.raises(UsageError):
        get_suite("nope")


@pytest.fixture
def tiny(tmp_path: Path, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A five-pair suite over the planted family, one model only on a local Hub, one nowhere."""
    hubbed = synth.write_hf(synth.drift(synth.random_llama(seed=0), 0.2, seed=9), tmp_path / "hubbed")
    suites = {
        "suites": {
            "tiny": {
                "category": "SFT",
                "label": "related",
                "models": {"base": None, "drift": None, "perm": "org/perm", "independent": None, "ghost": None, "hubbed": "acme/hubbed"},
                "pairs": [["base", "drift"], ["base", "perm"], ["base", "ghost"], ["drift", "hubbed"], ["base", "independent"]],
            }
        }
    }
    (tmp_path / "suites.json").write_text(json.dumps(suites))
    # "perm" is found by its repo name under org/, the others by their short names.
    models = tmp_path / "models"
    (models / "org").mkdir(parents=True)
    for name in ("base", "drift", "independent"):
        (models / name).symlink_to(family[name], target_is_directory=True)
    (models / "org" / "perm").symlink_to(family["perm"], target_is_directory=True)
    with serving(monkeypatch, tmp_path / "hf") as srv:
        srv.add_folder("acme/hubbed", hubbed)
        yield {"suites": tmp_path / "suites.json", "models": models, "store": tmp_path / "results.sqlite", "hub": hubbed}


def _counting_open(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    import awmtrace.pipeline as pipeline

    opened: Counter[str] = Counter()
    real = pipeline.open_model

    def counted(spec, progress=None):  # type: ignore[no-untyped-def]
        opened[Path(spec).name] += 1
        return real(spec, progress)

    monkeypatch.setattr(pipeline, "open_model", counted)
    return opened


def test_run_stores_every_pair_reports_missing_models_and_skips_done_pairs(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _counting_open(monkeypatch)
    seen = []
    run = run_suite("tiny", suites_file=tiny["suites"], models_dir=tiny["models"], store=tiny["store"], device="cpu", on_pair=seen.append)
    assert [o.status for o in run.outcomes] == ["done", "done", "missing", "done", "done"]
    assert seen == list(run.outcomes)
    assert set(run.missing_models) == {"ghost"} and "gives no Hub repo id" in run.missing_models["ghost"]
    assert not run.complete
    assert max(opened.values()) == 1 and len(opened) == 5  # base used by three pairs, opened once
    scores = {(o.name_a, o.name_b): o.record.result["score"] for o in run.outcomes if o.record}
    assert scores[("base", "drift")] > 0.5 and scores[("base", "perm")] > 0.9 and scores[("base", "independent")] < 0.1
    with ResultsStore(tiny["store"], create=False) as store:
        records = store.records("tiny")
    assert len(records) == 4
    hubbed = next(r for r in records if r.name_b == "hubbed")
    assert hubbed.fingerprint_b.startswith("hf:acme/hubbed@") and hubbed.label == "related" and hubbed.category == "SFT"

    opened.clear()
    again = run_suite("tiny", suites_file=tiny["suites"], models_dir=tiny["models"], store=tiny["store"], device="cpu")
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "missing", "skipped", "skipped"]
    assert sum(opened.values()) == 0
    assert again.outcomes[0].record == records[0]

    # Another option that changes the score, or another tool version: computed again.
    monkeypatch.setattr("awmtrace._version.__version__", "99.0")
    third = run_suite("tiny", suites_file=tiny["suites"], models_dir=tiny["models"], store=tiny["store"], device="cpu")
    assert third.count("done") == 4
    with ResultsStore(tiny["store"], create=False) as store:
        assert len(store.records("tiny")) == 8


def test_offline_without_a_cached_copy_the_hub_model_is_missing(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = run_suite("tiny", suites_file=tiny["suites"], models_dir=tiny["models"], store=tiny["store"], device="cpu")
    assert [o.status for o in run.outcomes] == ["done", "done", "missing", "missing", "done"]
    assert "HF_HUB_OFFLINE" in run.missing_models["hubbed"]


def test_a_run_killed_mid_pair_loses_only_that_pair(tiny: dict[str, Path]) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from awmtrace.suites import run_suite
        done = []
        def progress(stage, i, n):
            if sum(o.status == "done" for o in done) == 2 and stage == "scoring layers":
                os.kill(os.getpid(), signal.SIGKILL)
        run_suite("tiny", suites_file={str(tiny["suites"])!r}, models_dir={str(tiny["models"])!r},
                  store={str(tiny["store"])!r}, device="cpu", fetch=False, progress=progress, on_pair=done.append)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    with ResultsStore(tiny["store"], create=False) as store:
        assert [(r.name_a, r.name_b) for r in store.records("tiny")] == [("base", "drift"), ("base", "perm")]
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rerun = run_suite("tiny", suites_file=tiny["suites"], models_dir=tiny["models"], store=tiny["store"], device="cpu", fetch=False)
    assert [o.status for o in rerun.outcomes] == ["skipped", "skipped", "missing", "missing", "done"]


def test_suite_run_and_report_on_the_command_line(tiny: dict[str, Path]) -> None:
    runner = CliRunner()
    common = ["--suites", str(tiny["suites"]), "--store", str(tiny["store"])]
    res = runner.invoke(main, ["suite", "run", "tiny", "--models-dir", str(tiny["models"]), "--device", "cpu", "--json", *common])
    assert res.exit_code == 5, res.output  # one pair could not run: incomplete
    data = json.loads(res.output)
    assert data["counts"] == {"done": 4, "skipped": 0, "missing": 1, "failed": 0}

    res = runner.invoke(main, ["suite", "report", "tiny", "--format", "json", *common])
    report = json.loads(res.output)
    rows = report["rows"]
    assert [r["status"] for r in rows] == ["done", "done", "not run", "done", "done"]
    assert rows[0]["score"] > 0.5 and rows[0]["category"] == "SFT" and rows[0]["label"] == "related"

    res = runner.invoke(main, ["suite", "report", "tiny", "--format", "csv", *common])
    table = list(csv.DictReader(io.StringIO(res.output)))
    assert [r["offspring"] for r in table] == ["drift", "perm", "ghost", "hubbed", "independent"]
    assert float(table[1]["score"]) > 0.9 and table[2]["score"] == ""

    # Holm-adjusted p over the 4 tested pairs is never below the raw p; the note explains it.
    done = [r for r in rows if r["status"] == "done"]
    assert all(r["p_holm"] >= r["p_value"] for r in done)
    assert "4 pairs tested at once" in report["multiple_comparison_note"]

    # Re-scoring under another null moves z (scores stay as stored), no weights read.
    null = tiny["store"].parent / "wide-null.json"
    null.write_text(json.dumps({"format": "awmtrace-null", "name": "wide", "mean": 0.0, "std": 0.1, "n": 10, "scores": []}))
    res = runner.invoke(main, ["suite", "report", "tiny", "--format", "json", "--null", str(null), *common])
    assert res.exit_code == 0, res.output
    rescored = json.loads(res.output)["rows"]
    assert rescored[1]["score"] == rows[1]["score"]
    assert rescored[1]["z"] == pytest.approx(rows[1]["score"] / 0.1)

    res = runner.invoke(main, ["suite", "report", "tiny", "--format", "md", *common])
    assert res.output.splitlines()[0].startswith("| category | base | offspring | score_q")
    res = runner.invoke(main, ["suite", "report", "tiny", *common])
    assert res.exit_code == 0 and "4 of 5 pairs have results" in res.output

    res = runner.invoke(main, ["suite", "run", "tiny", "--models-dir", str(tiny["models"]), "--device", "cpu", "--no-fetch", *common])
    assert res.exit_code == 5 and "already stored" in res.output and "fetching from the Hub is off" in res.output


def test_report_of_a_paper_suite_shows_the_paper_value(tmp_path: Path) -> None:
    rows = suite_report("cpt_pairs", ResultsStore(tmp_path / "r.sqlite"))
    assert all(r.status == "not run" for r in rows)
    first = rows[0]
    assert (first.base, first.offspring, first.paper_abs_z) == ("llama-2-7b", "CodeLlama-7b-hf", 250.78)
    res = CliRunner().invoke(main, ["suite", "report", "cpt_pairs", "--store", str(tmp_path / "absent.sqlite")])
    assert res.exit_code == 3 and "no results store here" in res.output
