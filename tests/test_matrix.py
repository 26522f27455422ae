"""awm matrix: all pairs from the per-model cache, families and the lineage tree on a planted collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from awmtrace import compare, synth
from awmtrace.collections import pairs as pairs_mod
from awmtrace.collections.matrix import matrix

# Index of each planted model in the collection, and the tree they were planted as.
NAMES = ["base", "finetune", "width", "depth", "upscaled", "vocab", "gguf", "indep1", "indep2"]
PLANTED = {  # child: (parent, evidence word, directed)
    "finetune": ("base", "no evidence", False),
    "width": ("base", "width", True),
    "depth": ("base", "depth pruning", True),
    "upscaled": ("base", "depth up-scaling", True),
    "vocab": ("base", "vocabulary extension", True),
    "gguf": ("base", "quantised copy", True),
}


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Nine models: a base, six planted descendants (each with its own light drift, as after healing), two unrelated."""
    root = tmp_path_factory.mktemp("collection")
    base = synth.random_llama(seed=0)
    models = {
        "base": base,
        "finetune": synth.drift(base, 0.05, seed=11),
        "width": synth.prune_width(synth.drift(base, 0.05, seed=12)),
        "depth": synth.prune_depth(synth.drift(base, 0.05, seed=13), [0, 1, 3]),
        "upscaled": synth.upscale_depth(synth.drift(base, 0.05, seed=14), [0, 1, 2, 3, 2, 3]),
        "vocab": synth.extend_vocab(synth.drift(base, 0.05, seed=15), 64),
        "indep1": synth.random_llama(seed=42),
        "indep2": synth.random_llama(seed=43),
    }
    paths = {k: synth.write_hf(m, root / k) for k, m in models.items()}
    paths["gguf"] = synth.write_gguf(base, root / "gguf" / "base-q8_0.gguf", "Q8_0")
    return [paths[n] for n in NAMES]


@pytest.fixture(scope="module")
def result(collection: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.mktemp("cache")
    return matrix(collection, cache_dir=cache, store=cache / "results.sqlite")


def test_matrix_equals_pairwise_compare(collection: list[Path], result: Any) -> None:
    for i, j in [(0, 1), (0, 2), (2, 0), (0, 3), (0, 4), (3, 4), (0, 5), (0, 6), (5, 6), (0, 7), (7, 8), (2, 3)]:
        want = compare(collection[i], collection[j], device="cpu")
        got = result.score[i][j]
        # float16 Grams: measured differences are ~1e-6 on these models.
        assert got == pytest.approx(want.score, abs=2e-5), (NAMES[i], NAMES[j])
        assert result.verdict[i][j] == want.verdict.label
    s = np.array(result.score, dtype=float)
    assert np.allclose(s, s.T)


def test_families_as_planted(result: Any) -> None:
    idx = {n: i for i, n in enumerate(NAMES)}
    fam = sorted(idx[n] for n in ("base", "finetune", "width", "depth", "upscaled", "vocab", "gguf"))
    assert result.families == [fam, [idx["indep1"]], [idx["indep2"]]]
    assert "connected components" in result.family_rule


def test_tree_edges_and_directions_as_planted(result: Any) -> None:
    idx = {n: i for i, n in enumerate(NAMES)}
    edges = {(e["parent"], e["child"]) if e["directed"] else tuple(sorted((e["parent"], e["child"]))): e for e in result.tree}
    assert len(result.tree) == len(PLANTED)
    for child, (parent, word, directed) in PLANTED.items():
        p, c = idx[parent], idx[child]
        key = (p, c) if directed else tuple(sorted((p, c)))
        assert key in edges, (child, result.tree)
        edge = edges[key]
        assert edge["directed"] is directed
        assert any(word in text for text in edge["evidence"]), edge


def test_json_output_matches_schema(result: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    schema = json.loads(files("awmtrace.data").joinpath("schemas/matrix.schema.json").read_text())
    data = json.loads(json.dumps(result.to_dict()))
    jsonschema.validate(data, schema)
    assert data["models"][0]["input"].endswith("base")
    assert len(data["score"]) == len(NAMES)


def test_resume_after_kill_and_added_model(collection: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = pairs_mod.score_pair

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs_mod, "score_pair", counting)
    store = tmp_path / "r.sqlite"
    four = collection[:4]

    def killer(stage: str, done: int, total: int) -> None:
        if stage == "scoring pairs" and done == 2:
            raise KeyboardInterrupt  # the run dies after two pairs were stored

    with pytest.raises(KeyboardInterrupt):
        matrix(four, cache_dir=tmp_path / "c", store=store, progress=killer)
    assert len(calls) == 2
    calls.clear()
    full = matrix(four, cache_dir=tmp_path / "c", store=store)
    assert len(calls) == 6 - 2
    calls.clear()
    more = matrix([*four, collection[7]], cache_dir=tmp_path / "c", store=store)
    assert len(calls) == 4  # only the new model's pairs
    assert more.score[0][1] == full.score[0][1]


def test_duplicates_and_failed_models(collection: list[Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(collection[0], copy)
    missing = tmp_path / "nope"
    out = matrix([collection[0], copy, collection[7], missing], cache_dir=tmp_path / "c")
    assert out.models[1]["duplicate_of"] == 0
    assert any("same content" in n for n in out.notes)
    assert out.score[0][1] == 1.0 and out.score[1][2] == out.score[0][2]
    assert out.models[3]["error"] and out.failed
    assert out.score[3][0] is None
    assert [0, 1] in out.families
    assert sum(1 for p in out.pairs if "error" not in p) == 1  # base vs indep1, once


def test_local_workers_give_identical_scores(collection: list[Path], result: Any, tmp_path: Path) -> None:
    sub = [collection[i] for i in (0, 2, 5, 7)]
    out = matrix(sub, cache_dir=tmp_path / "c", workers=2)
    for x, i in enumerate((0, 2, 5, 7)):
        for y, j in enumerate((0, 2, 5, 7)):
            assert out.score[x][y] == result.score[i][j]


def test_worker_processes_share_out_the_cpus() -> None:
    import os

    from awmtrace.collections.engine import LocalEngine, available_cpus

    cpus = available_cpus()
    auto = LocalEngine(None)
    assert auto.workers == cpus and auto.threads == 1
    assert LocalEngine(1).threads == cpus
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    eng = LocalEngine(2)
    try:
        seen = [r for _, r in eng.run([(os.getenv, ("OPENBLAS_NUM_THREADS",)), (os.getenv, ("AWMTRACE_THREADS",))])]
        assert os.environ.get("OPENBLAS_NUM_THREADS") == before  # this process's environment is restored at once
    finally:
        eng.close()
    assert sorted(seen) == [str(max(1, cpus // 2))] * 2  # each worker gets its share, set before its BLAS loads


def test_ray_engine_gives_identical_scores(collection: list[Path], result: Any, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from awmtrace.collections.engine import RayEngine

    sub = [collection[i] for i in (0, 1, 6, 8)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = matrix(sub, cache_dir=tmp_path / "c", engine=RayEngine())
    finally:
        ray.shutdown()
    for x, i in enumerate((0, 1, 6, 8)):
        for y, j in enumerate((0, 1, 6, 8)):
            assert out.score[x][y] == result.score[i][j]


def test_unreachable_ray_address_is_one_line(collection: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from awmtrace.errors import UsageError

    with pytest.raises(UsageError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        matrix(collection[:2], cache_dir=tmp_path, engine="ray", ray_address="127.0.0.1:1")


@pytest.mark.parametrize("device", ["torch-cpu", "cuda"])
def test_torch_device_scores_as_the_numpy_path(collection: list[Path], result: Any, tmp_path: Path, device: str) -> None:
    # The torch path unpacks the cached Grams on the device and aligns them there: every pair of the planted
    # collection (gathers, a narrower model, depth matching, samples-form K) agrees with the numpy path.
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (benchmarks/gpu_check.py runs this on a GPU machine)")
    out = matrix(collection, cache_dir=tmp_path / "c", device=device)
    assert out.families == result.families
    for i in range(len(NAMES)):
        for j in range(len(NAMES)):
            assert out.score[i][j] == pytest.approx(result.score[i][j], abs=2e-6), (NAMES[i], NAMES[j])
            assert out.verdict[i][j] == result.verdict[i][j]
    assert {r["device"] for r in out.results.values()} == {device}


def test_a_device_that_is_not_there_fails_in_one_line_before_any_model_is_read(collection: list[Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from awmtrace.cli import main

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["matrix", str(collection[0]), str(collection[1]), "--device", "cuda", "--cache-dir", str(tmp_path / "c")]
    r = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 3, r.output
    assert "--device cuda is not available" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing extracted
