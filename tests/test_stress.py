"""``awm stress``: transformed in-memory copies of a tiny model, the layer-0 function check, CLI, JSON schema, figure."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.cli.common import dumps
from awmtrace.errors import MissingTensor, UsageError
from awmtrace.io.memory import MemorySource
from awmtrace.pipeline import open_model
from awmtrace.quantize import round_trip
from awmtrace.stress import (
    CHECK_TOLERANCE,
    TRANSFORMS,
    StressReport,
    check_inputs,
    function_check,
    load_weights,
    parse_transforms,
    stress,
)
from awmtrace.transforms import (
    LayerWeights,
    Transform,
    Weights,
    fold_gains,
    global_scale,
    haar_orthogonal,
    hadamard_matrix,
    rotate_residual,
)

HIDDEN = 256


@pytest.fixture(scope="module")
def gained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (GQA 8/4 heads) whose attention-norm gains are not 1, so a gain fold really changes Q/K."""
    m = synth.random_llama(hidden=HIDDEN, n_layers=4, seed=0)
    rng = np.random.default_rng(7)
    gains = {f"model.layers.{i}.input_layernorm.weight": np.exp(rng.normal(0.0, 0.4, HIDDEN)).astype(np.float32) for i in range(4)}
    return synth.write_hf(m, tmp_path_factory.mktemp("stress") / "gained", extra_tensors=gains)


@pytest.fixture(scope="module")
def report(gained: Path) -> StressReport:
    return stress(gained, seed=3)


def _schema() -> dict:
    text = (resources.files("awmtrace.data") / "schemas" / "stress.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _by_name(report: StressReport) -> dict[str, dict]:
    return {r["name"]: r for r in report.to_dict()["transforms"]}


def test_every_transform_is_scored_and_the_function_preserving_ones_pass_their_check(report: StressReport) -> None:
    rows = report.to_dict()["transforms"]
    assert [r["name"] for r in rows] == list(TRANSFORMS)
    preserving = {"permute_signs", "scale", "qk_rotation", "gain_fold", "haar_rotation", "hadamard_rotation", "awq_scaling"}
    assert {r["name"] for r in rows if r["function_preserving"]} == preserving
    for r in rows:
        if r["function_preserving"]:
            assert r["check_passed"] is True, r
            assert 0.0 <= r["check_max_rel_err"] <= CHECK_TOLERANCE
        else:
            assert r["check_max_rel_err"] is None and r["check"] is None
        assert r["seconds"] > 0 and r["verdict"] in ("related", "inconclusive", "independent")
    check = report.to_dict()["check"]
    # V and O of layer 0 were found by name, not made up.
    assert any("v_proj" in n for n in check["notes"]) and any("o_proj" in n for n in check["notes"])
    assert check["norm"] == "rms" and check["rope_layout"] == "half"


def test_the_report_validates_against_its_schema(report: StressReport) -> None:
    data = json.loads(dumps(report.to_dict()))
    jsonschema.validate(data, _schema())
    broken = dict(data, transforms=[dict(data["transforms"][-1], check_max_rel_err=0.5)])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_invariances_awm_already_has_stay_related(report: StressReport) -> None:
    rows = _by_name(report)
    for name in ("permute_signs", "scale", "qk_rotation", "quant_q8_0"):
        assert rows[name]["score"] > 0.99, name
    for name in ("vocab_extension", "width_prune", "depth_prune", "layer_duplication", "noise_20db", "noise_10db", "quant_q4_k"):
        assert rows[name]["verdict"] == "related", name
    assert rows["noise_20db"]["score"] > rows["noise_10db"]["score"] > rows["noise_0db"]["score"]
    assert rows["width_prune"]["copy"]["hidden_size"] == HIDDEN * 3 // 4
    assert rows["depth_prune"]["copy"]["n_layers"] == 3 and rows["layer_duplication"]["copy"]["n_layers"] == 6
    assert rows["vocab_extension"]["copy"]["vocab_size"] > 2048


@pytest.mark.parametrize("name", ["gain_fold", "awq_scaling", "haar_rotation", "hadamard_rotation"])
def test_gain_folds_and_rotations_score_related(report: StressReport, name: str) -> None:
    row = _by_name(report)[name]
    assert row["verdict"] == "related" and row["score"] > 0.99


@pytest.fixture(scope="module")
def inputs(gained: Path):
    with open_model(gained) as m:
        return check_inputs(m, load_weights(m), seed=0)


def _haar_per_kv_head(w: Weights, rng: np.random.Generator) -> Weights:
    """Wrong on purpose: a general rotation of each Q/K head pair keeps q.k but does not commute with RoPE."""
    hd, group = w.head_dim, w.n_heads // w.n_kv_heads
    layers = []
    for layer in w.layers:
        q, k = layer.q.copy(), layer.k.copy()
        for g in range(w.n_kv_heads):
            r = haar_orthogonal(hd, rng).astype(np.float32)
            k[g * hd : (g + 1) * hd] = r @ layer.k[g * hd : (g + 1) * hd]
            for h in range(g * group, (g + 1) * group):
                q[h * hd : (h + 1) * hd] = r @ layer.q[h * hd : (h + 1) * hd]
        layers.append(replace(layer, q=q, k=k))
    return replace(w, layers=tuple(layers))


def _rotation_without_fold(w: Weights, rng: np.random.Generator) -> Weights:
    return rotate_residual(w, haar_orthogonal(w.hidden, rng))


def _rotation_forgetting_o(w: Weights, rng: np.random.Generator) -> Weights:
    out = rotate_residual(fold_gains(w), haar_orthogonal(w.hidden, rng))
    return replace(out, layers=tuple(replace(new, o=old.o) for new, old in zip(out.layers, w.layers, strict=True)))


def _rotation_transposed(w: Weights, rng: np.random.Generator) -> Weights:
    m = haar_orthogonal(w.hidden, rng).astype(np.float32)
    out = rotate_residual(fold_gains(w), m)
    return replace(out, layers=tuple(replace(layer, q=layer.q @ m.T @ m.T, k=layer.k @ m.T @ m.T) for layer in out.layers))


def _scale_forgetting_o(w: Weights, rng: np.random.Generator) -> Weights:
    out = global_scale(w, rng)
    return replace(out, layers=tuple(replace(new, o=old.o) for new, old in zip(out.layers, w.layers, strict=True)))


def _fold_keeping_gain(w: Weights, rng: np.random.Generator) -> Weights:
    out = fold_gains(w)
    return replace(out, layers=tuple(replace(new, gamma=old.gamma) for new, old in zip(out.layers, w.layers, strict=True)))


@pytest.mark.parametrize(
    "wrong",
    [_haar_per_kv_head, _rotation_without_fold, _rotation_forgetting_o, _rotation_transposed, _scale_forgetting_o, _fold_keeping_gain],
)
def test_the_check_fails_for_a_deliberately_wrong_transform(inputs, wrong) -> None:
    compare = ("v", "logits", "update") if wrong is _haar_per_kv_head else ("q", "k", "v", "logits", "update")
    result = function_check(inputs, Transform("wrong", "deliberately wrong", True, wrong, compare=compare))
    assert not result.passed
    assert result.max_rel_err > 100 * CHECK_TOLERANCE


def test_the_check_passes_for_the_right_versions_of_the_same_transforms(inputs) -> None:
    for name in ("qk_rotation", "haar_rotation", "scale", "gain_fold"):
        result = function_check(inputs, TRANSFORMS[name], seed=11)
        assert result.passed, (name, result.errors)


def test_unknown_transform_names_fail_with_one_line_and_write_nothing(gained: Path) -> None:
    before = sorted(p.name for p in gained.iterdir())
    plot = gained / "stress.png"
    r = CliRunner().invoke(main, ["stress", str(gained), "--transforms", "scale,rotate_everything", "--plot", str(plot), "--json"])
    assert r.exit_code != 0
    assert r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown transform(s) rotate_everything" in lines[0] and "haar_rotation" in lines[0]
    assert sorted(p.name for p in gained.iterdir()) == before
    with pytest.raises(UsageError):
        parse_transforms("scale,,nope")


def test_cli_json_validates_and_plot_writes_a_png(gained: Path, tmp_path: Path) -> None:
    plot = tmp_path / "stress.png"
    before = sorted(p.name for p in gained.iterdir())
    r = CliRunner().invoke(main, ["stress", str(gained), "--transforms", "scale,width_prune", "--json", "-q", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    jsonschema.validate(data, _schema())
    assert [t["name"] for t in data["transforms"]] == ["scale", "width_prune"]
    assert data["transforms"][0]["function_preserving"] is True and data["transforms"][1]["check_max_rel_err"] is None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in gained.iterdir()) == before


def test_cli_table_and_transform_list(gained: Path) -> None:
    r = CliRunner().invoke(main, ["stress", str(gained), "--transforms", "qk_rotation,depth_prune", "-q"])
    assert r.exit_code == 0, r.output
    assert "qk_rotation" in r.stdout and "depth_prune" in r.stdout and "related" in r.stdout
    r = CliRunner().invoke(main, ["stress", str(gained), "--transforms", "list"])
    assert r.exit_code == 0
    for name in TRANSFORMS:
        assert name in r.stdout


def test_gguf_model_uses_interleaved_rope_and_gguf_names(tmp_path: Path) -> None:
    path = synth.write_gguf(synth.random_llama(hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=1), tmp_path / "m.gguf")
    rep = stress(path, "qk_rotation,permute_signs,hadamard_rotation").to_dict()
    assert rep["check"]["rope_layout"] == "interleaved"
    assert any("blk.0.attn_v.weight" in n for n in rep["check"]["notes"])
    for row in rep["transforms"]:
        assert row["check_passed"] is True, row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_model_without_tokenizer_is_matched_by_token_id(tmp_path: Path) -> None:
    path = synth.write_hf(
        synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, seed=2), tmp_path / "m", tokenizer=False
    )
    rep = stress(path, "vocab_extension,scale").to_dict()
    assert any("tokens matched by id" in n for n in rep["notes"])
    assert [r["verdict"] for r in rep["transforms"]] == ["related", "related"]


def test_hadamard_matrices_are_orthogonal_and_say_when_they_are_only_blockwise() -> None:
    for n in (64, 576, 896, 768, 1000, 5120):
        h, note = hadamard_matrix(n)
        assert note is None, n
        assert np.allclose(h @ h.T, np.eye(n), atol=1e-9)
        assert np.allclose(np.abs(h), 1 / np.sqrt(n))
    h, note = hadamard_matrix(30)
    assert np.allclose(h @ h.T, np.eye(30)) and note is not None and "15 blocks of 2" in note


def test_q4_k_round_trip_is_a_real_q4_k_and_falls_back_like_llama_cpp() -> None:
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    err = {t: float(np.linalg.norm(round_trip(a, t)[0] - a) / np.linalg.norm(a)) for t in ("Q8_0", "Q4_K", "Q4_0")}
    # 4.5 bits with per-32 scales and mins: clearly coarser than Q8_0, finer than Q4_0.
    assert err["Q8_0"] < 0.01 < err["Q4_K"] < err["Q4_0"] < 0.1
    from awmtrace.quantize import quantize_q4_k

    assert quantize_q4_k(a).shape == (64, 2 * 144)
    flat = np.full((2, 256), 0.5, dtype=np.float32)
    assert np.allclose(round_trip(flat, "Q4_K")[0], flat, rtol=1e-3)
    out, note = round_trip(a[:, :96], "Q4_K")
    assert note is not None and "Q5_0" in note and out.shape == (64, 96)
    out, note = round_trip(a[:, :40], "Q8_0")
    assert note is not None and "F16" in note


def test_memory_source_serves_arrays_like_a_checkpoint() -> None:
    src = MemorySource({"a.weight": np.arange(6, dtype=np.float64).reshape(2, 3)}, label="x")
    assert src.names() == ["a.weight"] and src.shape("a.weight") == (2, 3) and src.dtype("a.weight") == "F32"
    assert src.read("a.weight").dtype == np.float32
    assert np.array_equal(src.row_reader("a.weight").take(np.array([1])), [[3.0, 4.0, 5.0]])
    assert "a.weight" in src and str(src.path) == "<memory>/x"
    with pytest.raises(MissingTensor):
        src.read("b.weight")


def test_layer_weights_are_not_modified_in_place(inputs) -> None:
    w = inputs.weights
    snapshot = [(layer.q.copy(), layer.gamma.copy()) for layer in w.layers if isinstance(layer, LayerWeights) and layer.gamma is not None]
    for t in TRANSFORMS.values():
        t.apply(w, np.random.default_rng(0))
    for (q, g), layer in zip(snapshot, w.layers, strict=True):
        assert np.array_equal(q, layer.q) and layer.gamma is not None and np.array_equal(g, layer.gamma)


def test_q4_k_quantiser_matches_a_literal_transcription_of_ggml() -> None:
    from q4k_reference import quantize_block_q4_k

    from awmtrace.quantize import quantize_q4_k

    rng = np.random.default_rng(0)
    blocks = np.concatenate(
        [
            rng.standard_normal((3, 256)) * 0.02,  # weight-like
            rng.standard_normal((3, 256)) + 0.5,  # shifted: negative mins
            np.abs(rng.standard_normal((2, 256))),  # all positive: ggml's this_min > 0 branch
            rng.standard_t(3, (3, 256)) * 0.05,  # heavy tails
            np.zeros((1, 256)),  # flat
        ]
    ).astype(np.float32)
    ref = np.frombuffer(b"".join(quantize_block_q4_k(b) for b in blocks), dtype=np.uint8).reshape(len(blocks), 144)
    ours = quantize_q4_k(blocks)
    # Float32 sums in a different order may flip a near-tie; everything else is byte for byte.
    assert np.mean([np.array_equal(r, o) for r, o in zip(ref, ours, strict=True)]) >= 0.8
    assert np.count_nonzero(ref != ours) <= 0.005 * ref.size


@pytest.mark.parametrize("layout", ["contiguous", "per_head", "kv_group"])
def test_v_is_cut_from_fused_qkv_in_each_layout(layout: str) -> None:
    from awmtrace.arch.qkv import split_qkv
    from awmtrace.stress_check import _split_v

    nh, nkv, hd, d_in = (4, 4, 3, 5) if layout == "per_head" else (4, 2, 3, 5)
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((nh * hd, d_in)), rng.standard_normal((nkv * hd, d_in)), rng.standard_normal((nkv * hd, d_in))
    if layout == "contiguous":
        fused = np.vstack([q, k, v])
    elif layout == "per_head":
        fused = np.stack([q.reshape(nh, hd, d_in), k.reshape(nh, hd, d_in), v.reshape(nh, hd, d_in)], axis=1).reshape(-1, d_in)
    else:
        g = nh // nkv
        parts = [np.vstack([q[(j * g) * hd : (j + 1) * g * hd], k[j * hd : (j + 1) * hd], v[j * hd : (j + 1) * hd]]) for j in range(nkv)]
        fused = np.vstack(parts)
    assert np.array_equal(split_qkv(fused, layout, "k", nh, nkv, hd), k)  # the fused weight is built as arch/qkv.py reads it
    assert np.array_equal(_split_v(fused, layout, nh, nkv, hd), v)


def test_behind_layer_norm_sign_flips_and_rotations_are_not_function_preserving(inputs) -> None:
    ln = replace(inputs, norm="layer")
    for name in ("permute_signs", "haar_rotation"):
        assert TRANSFORMS[name].rms_only
        assert not function_check(ln, TRANSFORMS[name]).passed, name
    for name in ("scale", "gain_fold", "awq_scaling", "qk_rotation"):
        assert function_check(ln, TRANSFORMS[name]).passed, name


@pytest.mark.parametrize("example_id", ["internlm2", "pythia", "gpt2 (openai-community names)"])
def test_fused_qkv_families_are_checked_with_their_own_v(example_id: str, tmp_path: Path) -> None:
    from test_architectures import EXAMPLES, EXPECTED, Planted

    example = next(ex for _, ex in EXAMPLES if ex.id == example_id)
    planted = Planted(example, EXPECTED[example_id], tmp_path / "ckpt", seed=1)
    before = sorted(p.name for p in planted.folder.iterdir())
    rep = stress(planted.folder, "permute_signs,scale,qk_rotation", min_shared_tokens=16).to_dict()
    notes = rep["check"]["notes"]
    assert any(n.startswith("V: ") and "fused QKV" in n for n in notes)
    # The fixture's O is a placeholder of the wrong shape: random O, and the result says so.
    assert any("random matrices" in n for n in notes)
    rows = {r["name"]: r for r in rep["transforms"]}
    layer_norm = example_id != "internlm2"
    assert rep["check"]["norm"] == ("layer" if layer_norm else "rms")
    assert rows["permute_signs"]["function_preserving"] is not layer_norm
    for row in rows.values():
        assert row["check_passed"] in (True, None) and row["score"] > 0.99, row
    assert sorted(p.name for p in planted.folder.iterdir()) == before
