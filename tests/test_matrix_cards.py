"""Model cards (``base_model`` in a README's front matter) as direction evidence of `awm matrix`'s lineage tree.

The card belongs to the input (its folder or Hub repo), not to the content-keyed cache entry; the Hub
fetcher brings it along with the weights (it is small), and a hostile or odd card is simply no card.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.io import hub
from awmtrace.io.card import CARD_READ_BYTES, MAX_CARD_BYTES, card_base_models
from awmtrace.pipeline import hub_tensors

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, serving


def card(*lines: str) -> str:
    return "---\n" + "\n".join(lines) + "\n---\n# A model\n\nbase_model: not/front-matter\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (card("license: mit", "base_model: org/base"), ["org/base"]),
        (card("base_model:", "- org/a", "- 'org/b'", "tags: [x]"), ["org/a", "org/b"]),
        (card('base_model: ["org/a", org/b]'), ["org/a", "org/b"]),
        (card("base_model: org/base # the float one"), ["org/base"]),
        ("\ufeff---\r\nbase_model: org/base\r\n---\r\n", ["org/base"]),
        (card("license: mit"), []),
        ("# no front matter\nbase_model: org/base\n", []),
        ("---\nbase_model: org/base\n", []),  # front matter never closed
        (card("base_model: " + "x" * 300), []),  # not a repo id
        (card("base_model: org/\x07bell"), []),
        ("", []),
    ],
    ids=["plain", "list", "flow", "comment", "crlf-bom", "no-key", "no-front", "unclosed", "too-long", "control", "empty"],
)
def test_card_base_models_reads_only_the_front_matter(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    assert card_base_models(tmp_path) == expected


def test_a_card_that_is_not_a_regular_file_or_is_huge_is_no_card_and_never_blocks(tmp_path: Path) -> None:
    assert card_base_models(tmp_path) == []  # absent
    os.mkfifo(tmp_path / "README.md")  # a FIFO would block an open for reading until a writer came
    assert card_base_models(tmp_path) == []
    (tmp_path / "README.md").unlink()
    (tmp_path / "README.md").mkdir()
    assert card_base_models(tmp_path) == []
    (tmp_path / "README.md").rmdir()
    # The front matter must come within the first CARD_READ_BYTES: a card is not read whole.
    (tmp_path / "README.md").write_text("---\n" + "x: y\n" * (CARD_READ_BYTES // 5) + "base_model: org/base\n---\n")
    assert card_base_models(tmp_path) == []


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base and a fine-tune-like drift of it: same shape, vocabulary and storage type (no other direction evidence)."""
    root = tmp_path_factory.mktemp("carded")
    base = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=0)
    return {"base": synth.write_hf(base, root / "base"), "ft": synth.write_hf(synth.drift(base, 0.05, seed=11), root / "ft")}


def run_matrix(tmp_path: Path, *models: str) -> dict[str, Any]:
    args = ["--store", str(tmp_path / "r.sqlite"), "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(main, ["matrix", *models, "--tree", "--json", *args])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["families"] == [list(range(len(models)))], data["verdict"]
    return data


def test_a_local_card_naming_the_other_input_directs_the_edge(family: dict[str, Path], tmp_path: Path) -> None:
    ft = shutil.copytree(family["ft"], tmp_path / "ft")
    (ft / "README.md").write_text(card(f"base_model: {family['base']}"))
    data = run_matrix(tmp_path, str(ft), str(family["base"]))
    assert [m["card_base_model"] for m in data["models"]] == [[str(family["base"])], []]
    (edge,) = data["tree"]
    assert (edge["parent"], edge["child"], edge["directed"]) == (1, 0, True)
    assert edge["evidence"] == [f"model card: model 0 declares base_model {str(family['base'])!r}, which is model 1"]


def test_the_card_belongs_to_the_input_not_to_the_shared_cache_entry(family: dict[str, Path], tmp_path: Path) -> None:
    # Two folders with the same weights share one content-keyed cache entry; only one has a card.
    carded = shutil.copytree(family["ft"], tmp_path / "carded")
    (carded / "README.md").write_text(card(f"base_model: {family['base']}"))
    data = run_matrix(tmp_path, str(carded), str(family["ft"]), str(family["base"]))
    assert data["models"][1]["duplicate_of"] == 0
    assert [m["card_base_model"] for m in data["models"]] == [[str(family["base"])], [], []]
    data = run_matrix(tmp_path, str(family["ft"]), str(family["base"]))  # the entry exists now, read back without a worker
    assert data["models"][0]["card_base_model"] == []
    (edge,) = data["tree"]
    assert edge["directed"] is False


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    with serving(monkeypatch, tmp_path / "hf") as srv:
        yield srv


def with_card(folder: Path, dest: Path, text: str) -> Path:
    out = shutil.copytree(folder, dest)
    (out / "README.md").write_text(text)
    return out


def test_the_fetcher_brings_the_card_and_a_hub_card_directs_the_edge(server: HubServer, family: dict[str, Path], tmp_path: Path) -> None:
    # Same upload date: only the card can direct the edge. The card names the base in another case, as people write it.
    server.add_folder(
        "Org/FT", with_card(family["ft"], tmp_path / "ft", card("base_model: org/Base")), last_modified="2024-01-01T00:00:00Z"
    )
    server.add_folder("org/base", with_card(family["base"], tmp_path / "b", card("license: mit")), last_modified="2024-01-01T00:00:00Z")
    data = run_matrix(tmp_path, "org/base", "Org/FT")
    assert [m["hub_id"] for m in data["models"]] == ["org/base", "Org/FT"]
    assert [m["card_base_model"] for m in data["models"]] == [[], ["org/Base"]]
    (edge,) = data["tree"]
    assert (edge["parent"], edge["child"], edge["directed"]) == (0, 1, True)
    assert edge["evidence"] == ["model card: model 1 declares base_model 'org/Base', which is model 0"]


def test_the_fetcher_skips_a_card_larger_than_any_real_one(server: HubServer, family: dict[str, Path], tmp_path: Path) -> None:
    server.add_folder("org/ft", with_card(family["ft"], tmp_path / "ft", card("base_model: org/base") + "x" * MAX_CARD_BYTES))
    path = hub.fetch("org/ft", select=hub_tensors).path
    assert path is not None and not (path / "README.md").exists()
    server.add_folder("org/ft2", with_card(family["ft"], tmp_path / "ft2", card("base_model: org/base")))
    path = hub.fetch("org/ft2", select=hub_tensors).path
    assert path is not None and card_base_models(path) == ["org/base"]
    assert "README.md" in [f["name"] for f in json.loads((path / hub.MANIFEST_NAME).read_text())["files"]]
