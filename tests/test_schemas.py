"""Every ``--json`` output validates against its published schema (awmtrace/data/schemas), from real runs of each command."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.report.schema import SCHEMA_VERSION, SCHEMAS, load_schema

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, serving


def run_json(*args: str) -> dict[str, Any]:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code in (0, 5), r.output
    data = json.loads(r.stdout)
    assert isinstance(data, dict)
    return data


def check(name: str, data: dict[str, Any]) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["audit"]["tool"] == "awmtrace"


@pytest.fixture(scope="module")
def suite_env(tmp_path_factory: pytest.TempPathFactory, family: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suite")
    suites = {
        "suites": {
            "mini": {
                "category": "SFT",
                "label": "related",
                "models": {"base": None, "drift": None, "ghost": None},
                "pairs": [["base", "drift"], ["base", "ghost"]],
            }
        }
    }
    (root / "suites.json").write_text(json.dumps(suites))
    models = root / "models"
    models.mkdir()
    for name in ("base", "drift"):
        (models / name).symlink_to(family[name], target_is_directory=True)
    return {"suites": root / "suites.json", "models": models, "store": root / "r.sqlite", "root": root}


def test_every_schema_is_valid_and_published() -> None:
    folder = Path(__file__).parents[1] / "src" / "awmtrace" / "data" / "schemas"
    assert sorted(p.name for p in folder.glob("*.schema.json")) >= sorted(f"{n}.schema.json" for n in SCHEMAS)
    for name in SCHEMAS:
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema")


def test_compare_and_inspect_outputs_validate(family: dict[str, Path], tmp_path: Path) -> None:
    data = run_json("compare", str(family["base"]), str(family["depth"]), "--json", "-q")
    check("compare", data)
    broken = {**data, "verdict": {**data["verdict"], "label": "maybe"}}
    with pytest.raises(jsonschema.ValidationError):
        check("compare", broken)  # the schema constrains, it does not just accept
    check("inspect", run_json("inspect", str(family["base"]), "--json"))
    gguf = synth.write_gguf(synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512), tmp_path / "m.gguf", "Q8_0")
    check("inspect", run_json("inspect", str(gguf), "--json"))


def test_demo_output_validates() -> None:
    check("demo", run_json("demo", "--json", "-q"))


def test_suite_outputs_validate(suite_env: dict[str, Path]) -> None:
    common = ["--suites", str(suite_env["suites"]), "--store", str(suite_env["store"])]
    ran = run_json("suite", "run", "mini", "--models-dir", str(suite_env["models"]), "--device", "cpu", "--no-fetch", "--json", *common)
    check("suite-run", ran)
    assert ran["counts"]["done"] == 1 and ran["counts"]["missing"] == 1
    inputs = ran["audit"]["inputs"]
    assert any(i["kind"] == "suites" and i["fingerprint"].startswith("sha256:") for i in inputs)
    assert {i["spec"] for i in inputs if i["kind"] == "model"} == {"base", "drift"}
    check("suite-report", run_json("suite", "report", "mini", "--format", "json", *common))
    check("suite-list", run_json("suite", "list", "--json"))
    check("suite-show", run_json("suite", "show", "sft_pairs", "--json"))


def _results(tmp_path: Path) -> Path:
    items = [
        {"name_a": f"a{i}", "name_b": f"b{i}", "label": label, "suite": "s", "result": {"score": s, "z": (s - 0.00375) / 0.0028}}
        for i, (s, label) in enumerate(
            [(0.9, "related"), (0.7, "related"), (0.01, "independent"), (-0.002, "independent"), (0.003, "independent")]
        )
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(items))
    return path


def test_evaluate_and_calibrate_outputs_validate(tmp_path: Path) -> None:
    src = _results(tmp_path)
    ev = run_json("evaluate", str(src), "--json", "-o", str(tmp_path / "eval"))
    check("evaluate", ev)
    assert set(ev["files"]) and ev["audit"]["inputs"][0]["fingerprint"].startswith("sha256:")
    cal = run_json("calibrate", "--from", str(src), "-o", str(tmp_path / "null.json"), "--json")
    check("calibrate", cal)
    assert cal["path"] == str(tmp_path / "null.json")


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    with serving(monkeypatch, tmp_path / "hf") as srv:
        tiny = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512)
        srv.add_folder("acme/tiny", synth.write_hf(tiny, tmp_path / "tiny"))
        yield srv


def test_fetch_output_validates_and_hub_models_record_repo_and_commit(hub_server: HubServer) -> None:
    fetched = run_json("fetch", "acme/tiny", "--json")
    check("fetch", fetched)
    commit = fetched["results"][0]["commit"]
    data = run_json("compare", "acme/tiny", "acme/tiny", "--json", "-q")
    check("compare", data)
    first = data["audit"]["inputs"][0]
    assert first["repo"] == "acme/tiny" and first["commit"] == commit and re.match(r"^sha256:", first["fingerprint"])
