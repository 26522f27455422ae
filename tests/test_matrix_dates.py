"""Hub upload dates as the weakest direction evidence of `awm matrix`'s lineage tree, against the local Hub stand-in."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.collections.tree import NO_EVIDENCE, direction
from awmtrace.io import hub
from awmtrace.pipeline import hub_tensors
from awmtrace.report.schema import load_schema

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, serving

JAN = "2024-01-03T12:00:00.000Z"
MAY = "2024-05-10T08:00:00.000Z"


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, a fine-tune-like drift of it, and a Q8_0 GGUF copy of it."""
    root = tmp_path_factory.mktemp("dated")
    base = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=0)
    return {
        "base": synth.write_hf(base, root / "base"),
        "ft": synth.write_hf(synth.drift(base, 0.05, seed=11), root / "ft"),
        "q8": synth.write_gguf(base, root / "q8" / "base-Q8_0.gguf", "Q8_0"),
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    with serving(monkeypatch, tmp_path / "hf") as srv:
        yield srv


def run_matrix(tmp_path: Path, *models: str) -> dict[str, Any]:
    r = CliRunner().invoke(
        main, ["matrix", *models, "--tree", "--json", "--store", str(tmp_path / "r.sqlite"), "--cache-dir", str(tmp_path / "cache")]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(load_schema("matrix"), format_checker=jsonschema.FormatChecker()).validate(data)
    assert data["families"] == [list(range(len(models)))], data["verdict"]  # one family: the tree has its edges
    return data


def dated(edge: dict[str, Any]) -> list[str]:
    return [e for e in edge["evidence"] if e.startswith("upload dates")]


def test_the_older_upload_is_the_parent(server: HubServer, family: dict[str, Path], tmp_path: Path) -> None:
    server.add_folder("org/ft", family["ft"], last_modified=MAY)
    server.add_folder("org/base", family["base"], last_modified=JAN)
    data = run_matrix(tmp_path, "org/ft", "org/base")
    assert [m["uploaded"] for m in data["models"]] == ["2024-05-10T08:00:00Z", "2024-01-03T12:00:00Z"]
    (edge,) = data["tree"]
    assert (edge["parent"], edge["child"], edge["directed"]) == (1, 0, True)
    assert edge["evidence"] == ["upload dates: model 1 (org/base) 2024-01-03 before model 0 (org/ft) 2024-05-10"]
    assert "upload dates" in data["tree_rule"]
    snap = next((tmp_path / "hf" / "awmtrace" / "models--org--base" / "snapshots").iterdir())
    assert json.loads((snap / hub.MANIFEST_NAME).read_text())["commit_date"] == "2024-01-03T12:00:00Z"


@pytest.mark.parametrize("dates", [(JAN, JAN), ("2024-01-03T00:00:00Z", "2024-01-03T20:00:00Z")], ids=["equal", "same-day"])
def test_dates_a_day_or_less_apart_give_no_direction(server: HubServer, family: dict[str, Path], tmp_path: Path, dates: Any) -> None:
    server.add_folder("org/base", family["base"], last_modified=dates[0])
    server.add_folder("org/ft", family["ft"], last_modified=dates[1])
    data = run_matrix(tmp_path, "org/base", "org/ft")
    assert all(m["uploaded"] for m in data["models"])
    (edge,) = data["tree"]
    assert edge["directed"] is False and edge["evidence"] == [NO_EVIDENCE]


def test_a_local_model_has_no_date_even_when_its_cache_entry_came_from_the_hub(
    server: HubServer, family: dict[str, Path], tmp_path: Path
) -> None:
    server.add_folder("org/base", family["base"], last_modified=JAN)
    server.add_folder("org/ft", family["ft"], last_modified=MAY)
    run_matrix(tmp_path, "org/base", "org/ft")  # the base's cache entry is built from its Hub snapshot
    data = run_matrix(tmp_path, str(family["base"]), "org/ft")  # the same content, read from a local folder
    assert [m["uploaded"] for m in data["models"]] == [None, "2024-05-10T08:00:00Z"]
    (edge,) = data["tree"]
    assert edge["directed"] is False and dated(edge) == []


@pytest.mark.parametrize("q_date", ["2023-11-01T00:00:00Z", MAY], ids=["quant-older", "quant-newer"])
def test_dates_never_overrule_a_stronger_rule(server: HubServer, family: dict[str, Path], tmp_path: Path, q_date: str) -> None:
    server.add_folder("org/base", family["base"], last_modified=JAN)
    server.add_folder("org/q8", family["q8"].parent, last_modified=q_date)
    data = run_matrix(tmp_path, "org/base", "org/q8")
    (edge,) = data["tree"]
    assert (edge["parent"], edge["child"], edge["directed"]) == (0, 1, True)
    assert edge["evidence"][0].startswith("quantised copy")
    if q_date < JAN:
        assert dated(edge) == [
            "upload dates disagree (weaker evidence, overruled): model 1 (org/q8) 2023-11-01 before model 0 (org/base) 2024-01-03"
        ]
    else:
        assert dated(edge) == ["upload dates: model 0 (org/base) 2024-01-03 before model 1 (org/q8) 2024-05-10"]


def test_dates_do_not_settle_a_conflict_between_stronger_rules() -> None:
    # Model 0 is quantised (so the child) but wider (so the parent): left undirected, the dates only named.
    info = [
        {"input": "a", "quantised": True, "weight_dtypes": ["Q8_0"], "hidden_size": 64, "n_layers": 2, "uploaded": "2024-01-01T00:00:00Z"},
        {"input": "b", "quantised": False, "weight_dtypes": ["F32"], "hidden_size": 48, "n_layers": 2, "uploaded": "2024-03-01T00:00:00Z"},
    ]
    d = direction(0, 1, info, {})
    assert d.parent is None and d.child is None
    assert d.evidence[0].startswith("conflicting evidence")
    assert d.evidence[1] == "upload dates (weaker, not used to settle it): model 0 (a) 2024-01-01 before model 1 (b) 2024-03-01"


@pytest.mark.parametrize(
    ("sent", "recorded"),
    [
        ("2024-01-03T12:00:00.000+02:00", "2024-01-03T10:00:00Z"),
        ("2024-01-03", "2024-01-03T00:00:00Z"),
        ("2024-02-30T00:00:00Z", None),
        ("yesterday", None),
        (12345, None),
        (None, None),
    ],
)
def test_the_fetcher_records_the_commit_date_and_distrusts_odd_ones(
    server: HubServer, family: dict[str, Path], sent: Any, recorded: str | None
) -> None:
    server.add_folder("org/base", family["base"], last_modified=sent)
    path = hub.fetch("org/base", select=hub_tensors).path
    assert path is not None
    assert json.loads((path / hub.MANIFEST_NAME).read_text())["commit_date"] == recorded
    assert hub.snapshot_commit_date(path) == recorded
    assert hub.snapshot_commit_date(family["base"]) is None  # a local folder


def test_a_snapshot_fetched_before_dates_were_recorded_gets_its_date_on_the_next_online_fetch(
    server: HubServer, family: dict[str, Path]
) -> None:
    server.add_folder("org/base", family["base"], last_modified=JAN)
    path = hub.fetch("org/base", select=hub_tensors).path
    assert path is not None
    manifest = path / hub.MANIFEST_NAME
    old = json.loads(manifest.read_text())
    del old["commit_date"]
    manifest.write_text(json.dumps(old))
    assert hub.snapshot_commit_date(path) is None
    again = hub.fetch("org/base", select=hub_tensors)
    assert again.source == "awmtrace-cache" and again.path == path
    assert hub.snapshot_commit_date(path) == "2024-01-03T12:00:00Z"
