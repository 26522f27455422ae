"""Orthogonal alignment end to end: planted residual rotations are found, independent pairs stay on LAP and near 0."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import NumericalError, UsageError, VocabularyError
from awmtrace.nulls import null_caveats
from awmtrace.pipeline import compare

HIDDEN = 128


def haar(n: int, seed: int) -> np.ndarray:
    """A Haar-random ``(n, n)`` orthogonal matrix (float32)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def rotate(m: synth.SynthModel, seed: int = 11) -> synth.SynthModel:
    """Rotate the residual stream by ``Q``: ``E Q``, every reader ``W Q``, every writer ``Q' W``.

    All norms of the synthetic models are 1, so this preserves the function without any gain folding.
    """
    q = haar(m.hidden, seed)

    def reads(ws: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(w @ q) for w in ws]

    def writes(ws: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(q.T @ w) for w in ws]

    return replace(
        m,
        embed=np.ascontiguousarray(m.embed @ q),
        q=reads(m.q),
        k=reads(m.k),
        v=reads(m.v),
        gate=reads(m.gate),
        up=reads(m.up),
        o=writes(m.o),
        down=writes(m.down),
    )


def change_vocabulary(m: synth.SynthModel, seed: int = 12) -> synth.SynthModel:
    """Drop a tenth of the tokens and add 300 new ones (new rows), as a vocabulary change does."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(m.tokens), size=len(m.tokens) * 9 // 10, replace=False))
    new_rows = rng.standard_normal((300, m.hidden)).astype(np.float32) * np.float32(0.02)
    tokens = [m.tokens[i] for i in keep] + [f"new{i}" for i in range(300)]
    return replace(m, embed=np.ascontiguousarray(np.concatenate([m.embed[keep], new_rows])), tokens=tokens)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("orth")
    base = synth.random_llama(hidden=HIDDEN, n_layers=3, n_heads=4, n_kv_heads=2, vocab=2048, seed=0)
    rotated = rotate(base)
    perm, _, _ = synth.permute_hidden(base)
    made = {
        "base": base,
        "rotated": rotated,
        "rotated-drift": rotate(synth.drift(base, 0.3)),
        "rotated-width": synth.prune_width(rotated),
        "rotated-depth": synth.prune_depth(rotated, [0, 2]),
        "rotated-vocab": change_vocabulary(rotated),
        "perm": perm,
    }
    return {name: synth.write_hf(m, root / name) for name, m in made.items()}


@pytest.mark.parametrize("mode", ["auto", "orthogonal"])
def test_rotated_copy_is_related_with_auto_and_orthogonal(models: dict[str, Path], mode: str) -> None:
    r = compare(models["base"], models["rotated"], device="cpu", align=mode)
    assert r.alignment["method"] == "orthogonal"
    assert r.score > 0.999
    assert r.verdict.label == "related"
    q = r.alignment["quality"]
    assert q["orthogonal"] > 0.999 and q["lap"] < 0.5 and q["embedding_cka"] > 0.99


def test_lap_cannot_see_a_rotated_copy(models: dict[str, Path]) -> None:
    r = compare(models["base"], models["rotated"], device="cpu", align="lap")
    assert r.alignment["method"] == "lap"
    # A signed permutation catches only the largest entries of Q (a little at this tiny width, ~0 at real widths).
    assert abs(r.score) < 0.1


@pytest.mark.parametrize("name", ["rotated-drift", "rotated-width", "rotated-depth", "rotated-vocab"])
def test_rotation_combined_with_other_changes_stays_related(models: dict[str, Path], name: str) -> None:
    r = compare(models["base"], models[name], device="cpu")
    assert r.alignment["method"] == "orthogonal", r.alignment
    assert r.verdict.label == "related"
    assert r.score > 0.6
    # Reversing the order fits the rotation from the other side (base = wider, else A): the same up to the noise.
    back = compare(models[name], models["base"], device="cpu")
    assert back.alignment["method"] == "orthogonal"
    assert back.score == pytest.approx(r.score, abs=0.01)


def test_permuted_copy_stays_on_lap_without_fitting_a_rotation(models: dict[str, Path]) -> None:
    r = compare(models["base"], models["perm"], device="cpu")
    assert r.alignment["method"] == "lap"
    assert r.score > 0.999
    q = r.alignment["quality"]
    # The LAP evidence decided: neither the embedding CKA nor the Procrustes fit was computed.
    assert q["lap"] > 0.99 and q["embedding_cka"] is None and q["orthogonal"] is None
    assert "signed permutation" in r.alignment["reason"]


@pytest.mark.parametrize(
    ("hidden", "hidden_b", "seed_a", "seed_b", "vocab"),
    [(64, 64, 1, 2, 2048), (128, 128, 3, 4, 2048), (128, 96, 5, 6, 2048), (256, 256, 7, 8, 2048), (128, 128, 9, 10, 600)],
)
def test_independent_pairs_stay_on_lap_and_near_zero(
    tmp_path: Path, hidden: int, hidden_b: int, seed_a: int, seed_b: int, vocab: int
) -> None:
    # Same generator, same byte-level tokenizer: every token is shared, as for two models trained with one tokenizer.
    a = synth.random_llama(hidden=hidden, n_layers=2, n_heads=4, n_kv_heads=2, vocab=vocab, seed=seed_a)
    b = synth.random_llama(hidden=hidden_b, n_layers=2, n_heads=4, n_kv_heads=2, vocab=vocab, seed=seed_b)
    pa, pb = synth.write_hf(a, tmp_path / "a"), synth.write_hf(b, tmp_path / "b")
    auto = compare(pa, pb, device="cpu")
    assert auto.alignment["method"] == "lap"
    assert auto.alignment["quality"]["lap"] < 0.5
    assert abs(auto.score) < 0.03 and auto.verdict.label == "independent"
    for mode in ("lap", "orthogonal", "ids"):
        r = compare(pa, pb, device="cpu", align=mode)
        assert abs(r.score) < 0.05, (mode, r.score)
        assert r.alignment["method"] == ("orthogonal" if mode == "orthogonal" else "lap")


def test_independent_pair_with_rotation_of_one_side_stays_on_lap(tmp_path: Path) -> None:
    # Rotating an unrelated model gives the embeddings nothing in common: still LAP, still ~0.
    a = synth.random_llama(hidden=HIDDEN, n_layers=2, n_heads=4, n_kv_heads=2, seed=21)
    b = rotate(synth.random_llama(hidden=HIDDEN, n_layers=2, n_heads=4, n_kv_heads=2, seed=22))
    r = compare(synth.write_hf(a, tmp_path / "a"), synth.write_hf(b, tmp_path / "b"), device="cpu")
    assert r.alignment["method"] == "lap"
    assert abs(r.score) < 0.03


def test_ids_matches_token_rows_by_id_and_decides_as_auto(models: dict[str, Path]) -> None:
    r = compare(models["base"], models["rotated"], device="cpu", align="ids")
    assert r.alignment["tokens"] == "ids" and r.alignment["method"] == "orthogonal"
    assert r.score > 0.999
    assert compare(models["base"], models["perm"], device="cpu", align="ids").alignment["method"] == "lap"


def test_orthogonal_score_says_the_default_null_does_not_cover_it(models: dict[str, Path]) -> None:
    r = compare(models["base"], models["rotated"], device="cpu").to_dict()
    assert r["null"]["covers_alignment"] is False
    assert any("orthogonal alignment" in n for n in r["notes"])
    assert any("orthogonal alignment" in c for c in null_caveats(r))
    lap = compare(models["base"], models["perm"], device="cpu").to_dict()
    assert lap["null"]["covers_alignment"] is True
    assert not any("orthogonal alignment" in c for c in null_caveats(lap))
    # Stored results from before this field existed are LAP results.
    legacy = {**lap, "alignment": {**lap["alignment"], "method": "vocab"}}
    assert not any("orthogonal alignment" in c for c in null_caveats(legacy))


def test_too_few_shared_tokens_for_an_orthogonal_fit(tmp_path: Path) -> None:
    # 300 shared tokens cannot determine a rotation of 384 dimensions.
    a = synth.random_llama(hidden=384, n_layers=1, n_heads=4, n_kv_heads=2, vocab=300, seed=31)
    pa = synth.write_hf(a, tmp_path / "a")
    pb = synth.write_hf(rotate(a), tmp_path / "b")
    with pytest.raises(VocabularyError, match=r"needs at least 385 shared tokens.*found 300"):
        compare(pa, pb, device="cpu", align="orthogonal")
    auto = compare(pa, pb, device="cpu")
    assert auto.alignment["method"] == "lap"
    assert any("at least 385 shared tokens" in n for n in auto.notes)
    res = CliRunner().invoke(main, ["compare", str(pa), str(pb), "--align", "orthogonal"])
    assert res.exit_code != 0
    assert "385" in res.output and "Traceback" not in res.output


def test_rank_deficient_embedding_is_refused_for_orthogonal(tmp_path: Path) -> None:
    a = synth.random_llama(hidden=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab=2048, seed=41)
    rng = np.random.default_rng(0)
    # A factorised embedding: 2048 tokens, but every row lies in a 16-dimensional subspace.
    low = (rng.standard_normal((2048, 16)) @ rng.standard_normal((16, 64))).astype(np.float32) * np.float32(0.02)
    a = replace(a, embed=np.ascontiguousarray(low))
    pa, pb = synth.write_hf(a, tmp_path / "a"), synth.write_hf(rotate(a), tmp_path / "b")
    with pytest.raises(NumericalError, match=r"span only 1[56] of the 64 dimensions"):
        compare(pa, pb, device="cpu", align="orthogonal")


def test_unknown_align_is_a_usage_error(models: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="auto, lap, orthogonal, ids"):
        compare(models["base"], models["perm"], device="cpu", align="rotate")


def test_cli_align_choices_and_json(models: dict[str, Path]) -> None:
    import json

    res = CliRunner().invoke(main, ["compare", str(models["base"]), str(models["rotated"]), "--json", "-q"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["alignment"]["method"] == "orthogonal" and d["alignment"]["tokens"] == "vocab"
    assert d["alignment"]["requested"] == "auto" and d["alignment"]["reason"]
    res = CliRunner().invoke(main, ["compare", str(models["base"]), str(models["rotated"]), "--align", "lap"])
    assert res.exit_code == 0 and "independent" in res.output.lower()


def test_ffn_scores_use_the_rotation(models: dict[str, Path]) -> None:
    r = compare(models["base"], models["rotated"], device="cpu", weights="q,k,up,gate")
    assert r.ffn is not None
    assert r.ffn["score_up"] > 0.999 and r.ffn["score_gate"] > 0.999


@pytest.mark.parametrize("align", ["auto", "lap"])
def test_embeddings_near_the_float32_limit_still_align(tmp_path: Path, align: str) -> None:
    # Values of ~1e30 on both sides: every product overflows float32 unless the accumulator rescales.
    base = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, seed=51)
    perm, _, _ = synth.permute_hidden(base)
    huge = replace(base, embed=base.embed * np.float32(5e31))
    huge_perm = replace(perm, embed=perm.embed * np.float32(5e31))
    r = compare(synth.write_hf(huge, tmp_path / "a"), synth.write_hf(huge_perm, tmp_path / "b"), device="cpu", align=align)
    assert r.alignment["method"] == "lap"
    assert r.score > 0.999 and r.alignment["quality"]["lap"] > 0.99


def test_html_report_shows_the_alignment_caveat_once(models: dict[str, Path], tmp_path: Path) -> None:
    from awmtrace.report.html import write_pair_report

    r = compare(models["base"], models["rotated"], device="cpu").to_dict()
    out = write_pair_report(r, tmp_path / "pair.html") or tmp_path / "pair.html"
    html = Path(out).read_text(encoding="utf-8")
    assert html.count("this score used the orthogonal alignment") == 1


def test_matrix_scores_rotated_copies_as_compare_does(models: dict[str, Path], tmp_path: Path) -> None:
    # awm matrix scores an orthogonal alignment from its cached Grams (rotated there, not gathered): same scores as compare.
    from awmtrace.collections.matrix import matrix

    names = ["base", "rotated", "rotated-width", "rotated-depth"]
    out = matrix([models[n] for n in names], cache_dir=tmp_path / "cache")
    for j in range(1, len(names)):
        want = compare(models["base"], models[names[j]], device="cpu")
        assert out.results[(0, j)]["alignment"]["method"] == want.alignment["method"] == "orthogonal", names[j]
        assert out.score[0][j] == pytest.approx(want.score, abs=2e-5), names[j]
        assert out.verdict[0][j] == want.verdict.label
