"""The ``awm`` command as a user meets it: demo, compare (table and JSON), inspect, progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace._version import __version__
from awmtrace.cli import main


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_demo_shows_relatives_high_and_stranger_low() -> None:
    r = invoke("demo", "--json", "-q")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {row["member"] for row in rows} == {"fine-tuned", "permuted", "width-pruned", "depth-pruned", "gguf-q8_0", "independent"}
    for row in rows:
        label = row["result"]["verdict"]["label"]
        assert (label == "related") == row["expected_related"], row["member"]
        if not row["expected_related"]:
            assert abs(row["result"]["score"]) < 0.01


MEMBERS = ("fine-tuned", "permuted", "width-pruned", "depth-pruned", "gguf-q8_0", "independent")


def test_demo_table(tmp_path: Path) -> None:
    r = invoke("demo", "-q", "--out", str(tmp_path / "fam"))
    assert r.exit_code == 0, r.output
    # The verdict column, row by row (a member is itself named "independent", so a bare substring test proves nothing).
    verdicts = {line.split()[0]: line.split()[-1] for line in r.stdout.splitlines() if line.split()[:1] and line.split()[0] in MEMBERS}
    assert verdicts == {m: ("independent" if m == "independent" else "related") for m in MEMBERS}, r.stdout
    assert "unexpected" not in r.stdout
    assert (tmp_path / "fam" / "base" / "model.safetensors").is_file()


def test_compare_json_has_the_documented_fields(family: dict[str, Path]) -> None:
    r = invoke("compare", str(family["base"]), str(family["depth"]), "--json", "-q")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["schema_version"] == 1
    assert set(d) >= {"score", "score_q", "score_k", "layers", "alignment", "layer_matching", "z", "p_value", "verdict", "a", "b"}
    assert d["layers"][0].keys() >= {"index_a", "index_b", "score_q", "score_k"}
    assert d["alignment"].keys() >= {"hidden_size_a", "hidden_size_b", "base", "n_shared_tokens", "n_sign_flips", "method"}
    assert d["layer_matching"]["method"] == "lap"
    assert d["a"]["architecture"] == "LlamaForCausalLM" and d["b"]["n_layers"] == 3
    assert d["verdict"]["label"] == "related"


def test_compare_table_and_per_layer(family: dict[str, Path]) -> None:
    r = invoke("compare", str(family["base"]), str(family["independent"]), "-q")
    assert r.exit_code == 0, r.output
    assert "INDEPENDENT" in r.stdout
    assert "Per layer" not in r.stdout
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--per-layer")
    assert "Per layer" in r.stdout and "RELATED" in r.stdout


def test_compare_ffn_scores_are_reported_apart(family: dict[str, Path]) -> None:
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--json", "--weights", "q,k,up,gate")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    ffn = d["ffn"]
    assert ffn["weights"] == ["up", "gate"]
    assert ffn["score_up"] > 0.8 and ffn["score_gate"] > 0.8
    assert len(ffn["layers"]) == 8
    plain = json.loads(invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--json").stdout)
    assert plain["ffn"] is None
    assert d["score"] == pytest.approx(plain["score"])  # FFN never enters the AWM score


def test_progress_goes_to_stderr_and_quiet_silences_it(family: dict[str, Path]) -> None:
    env = {"AWM_PROGRESS": "1"}
    loud = invoke("compare", str(family["base"]), str(family["drift"]), "--json", env=env)
    assert loud.exit_code == 0
    assert "scoring layers" in loud.stderr
    json.loads(loud.stdout)  # stdout stays pure JSON
    quiet = invoke("compare", str(family["base"]), str(family["drift"]), "--json", "-q", env=env)
    assert "scoring layers" not in quiet.stderr


def test_inspect(family: dict[str, Path]) -> None:
    r = invoke("inspect", str(family["base"]), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["format"], d["family"], d["hidden_size"], d["n_layers"], d["n_heads"], d["n_kv_heads"], d["vocab_size"]) == (
        "safetensors",
        "llama",
        256,
        4,
        8,
        4,
        2048,
    )
    assert d["tokenizer_source"].startswith("tokenizer.json")
    assert d["tensors"]["layers"][2]["q"]["name"] == "model.layers.2.self_attn.q_proj.weight"
    text = invoke("inspect", str(family["base"])).stdout
    assert "model.embed_tokens.weight" in text and "hidden_size" in text


def test_version_and_help() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"awm, version {__version__}"
    r = invoke("--help")
    assert r.exit_code == 0 and "compare" in r.stdout and "demo" in r.stdout
