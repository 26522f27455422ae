"""CompareOptions: one frozen options object for compare, compare_models, compare_many, suites and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from awmtrace import CompareOptions, pipeline
from awmtrace.errors import UsageError
from awmtrace.pipeline import compare, compare_many, compare_models, open_model


def test_options_object_and_keywords_give_the_same_result(family: dict[str, Path]) -> None:
    opts = CompareOptions(weights="q,k,up", align="lap", device="cpu", fold_norms=False)
    by_object = compare(family["base"], family["perm"], opts)
    by_keywords = compare(family["base"], family["perm"], weights="q,k,up", align="lap", device="cpu", fold_norms=False)
    assert by_object.score == by_keywords.score
    assert by_object.ffn is not None and by_object.ffn["score_up"] == by_keywords.ffn["score_up"]
    assert by_object.alignment["requested"] == "lap"
    assert "fold_norms=False" in " ".join(by_object.notes)
    [many] = compare_many([(family["base"], family["perm"])], opts)
    assert many.score == by_object.score


def test_keywords_override_the_options_object(family: dict[str, Path]) -> None:
    with open_model(family["base"]) as a, open_model(family["drift"]) as b:
        result = compare_models(a, b, CompareOptions(device="cpu", fold_norms=False), fold_norms=True)
    assert not any("fold_norms=False" in note for note in result.notes)


def test_validated_checks_and_normalises() -> None:
    opts = CompareOptions.from_kwargs(weights="Q, k ,gate", align="orthogonal")
    assert opts.weights == ("q", "k", "gate")
    assert opts.align == "orthogonal"
    assert CompareOptions().validated() == CompareOptions()
    with pytest.raises(UsageError, match="align must be one of"):
        CompareOptions(align="nope").validated()
    with pytest.raises(UsageError, match="must include q and k"):
        CompareOptions.from_kwargs(weights="up")
    with pytest.raises(UsageError, match="unknown comparison option.*wieghts"):
        CompareOptions.from_kwargs(wieghts="q,k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.align = "lap"  # type: ignore[misc]


def test_compare_rejects_bad_options_before_opening_anything(family: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened a model")

    monkeypatch.setattr(pipeline, "open_model", fail)
    with pytest.raises(UsageError, match="unknown comparison option"):
        compare(family["base"], family["drift"], devcie="cpu")
    with pytest.raises(UsageError, match="must be a CompareOptions"):
        compare(family["base"], family["drift"], {"device": "cpu"})  # type: ignore[arg-type]
