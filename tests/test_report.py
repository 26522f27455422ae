"""Figures and the HTML report: produced from stored results, valid, offline, and showing the result's numbers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace.cli import main
from awmtrace.errors import FormatError
from awmtrace.evaluate import PairEntry, evaluate
from awmtrace.report.figures import plot_pair, plot_roc, plot_scores
from awmtrace.report.html import pair_report_html, write_pair_report

PNG = b"\x89PNG\r\n\x1a\n"


def _result(depths: tuple[int, int] = (4, 4), spec_b: str = "child") -> dict[str, object]:
    la, lb = depths
    pairs = [[0, 0], [1, 1], [3, 2]] if la != lb else [[i, i] for i in range(la)]
    layers = [
        {"index_a": a, "index_b": b, "score_q": 0.9 - 0.1 * a, "score_k": 0.8 - 0.05 * a, "score": (1.7 - 0.15 * a) / 2} for a, b in pairs
    ]
    matching: dict[str, object] = {"method": "identity" if la == lb else "lap", "n_layers_a": la, "n_layers_b": lb, "pairs": pairs}
    if la != lb:
        matching["score_matrix"] = [[0.9 if [i, j] in pairs else 0.01 * (i - j) for j in range(lb)] for i in range(la)]
    return {
        "schema_version": 1,
        "tool": {"name": "awmtrace", "version": "0.1.0"},
        "a": {
            "spec": "/models/base",
            "path": "/models/base",
            "format": "safetensors",
            "architecture": "LlamaForCausalLM",
            "hidden_size": 64,
            "n_layers": la,
        },
        "b": {"spec": spec_b, "path": spec_b, "format": "gguf", "architecture": "llama", "hidden_size": 64, "n_layers": lb},
        "score": 0.71234,
        "score_q": 0.76543,
        "score_k": 0.65931,
        "layers": layers,
        "alignment": {
            "method": "vocab",
            "base": "a",
            "hidden_size_a": 64,
            "hidden_size_b": 64,
            "n_shared_tokens": 1234,
            "n_sign_flips": 7,
            "identity": False,
            "mean_abs_cosine": 0.93,
        },
        "layer_matching": matching,
        "ffn": None,
        "z": 253.06786,
        "p_value": 0.0,
        "p_empirical": None,
        "verdict": {
            "label": "related",
            "rule": "related if z >= 5; inconclusive if 3 <= z < 5; else independent",
            "statistic": "z",
            "thresholds": {"related": 5.0, "inconclusive": 3.0},
        },
        "null": {
            "name": "paper-independent-90",
            "mean": 0.00375,
            "std": 0.0028,
            "n": 90,
            "has_raw_scores": False,
            "empirical_resolution": None,
            "provenance": {"source": "the paper"},
            "source": "awmtrace:nulls/paper",
        },
        "device": "cpu",
        "elapsed_s": 1.5,
        "notes": ["a note with <angle> & ampersand"],
    }


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    c.close()
    return c


@pytest.mark.parametrize("depths", [(4, 4), (4, 3)])
def test_plot_pair_writes_a_png(tmp_path: Path, depths: tuple[int, int]) -> None:
    out = plot_pair(_result(depths), tmp_path / "pair.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    # Two panels (per-layer + matching heatmap) make a wider image when depths differ.
    width = int.from_bytes(data[16:20], "big")
    assert width == (1100 if depths[0] != depths[1] else 700)


def test_figures_leave_no_pyplot_state(tmp_path: Path) -> None:
    # A fresh process: whether pyplot gets imported, and whether figures outlive the call, are process-wide state.
    (tmp_path / "result.json").write_text(json.dumps(_result()))
    script = f"""
import json, sys
from pathlib import Path
from awmtrace.report.figures import plot_pair
result = json.loads(Path({str(tmp_path / "result.json")!r}).read_text())
plot_pair(result, Path({str(tmp_path / "a.png")!r}))
imported = "matplotlib.pyplot" in sys.modules
import matplotlib.pyplot as plt
plot_pair(result, Path({str(tmp_path / "b.png")!r}))
print(json.dumps({{"pyplot_imported": imported, "open_figures": plt.get_fignums()}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"pyplot_imported": False, "open_figures": []}


def test_plot_pair_refuses_what_is_not_a_result(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="per-layer"):
        plot_pair({"score": 0.1}, tmp_path / "x.png")
    with pytest.raises(FormatError, match="not an awmtrace pair result"):
        write_pair_report({"hello": 1}, tmp_path / "x.html")


def test_html_report_is_self_contained_and_shows_the_numbers(tmp_path: Path) -> None:
    result = _result((4, 3), spec_b="<script>alert(1)</script>")
    path = write_pair_report(result, tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    parsed = _parse(html)
    text = " ".join(parsed.text)
    for number in ("0.7123", "0.7654", "0.6593", "253.07", "1234", "paper-independent-90"):
        assert number in text, number
    for row in result["layers"]:  # type: ignore[union-attr]
        assert f"{row['score_q']:.4f}" in text and f"{row['score_k']:.4f}" in text
    assert "RELATED" in text and "related if z >= 5" in text
    assert "< 1e-300" in text  # p underflow spelled out
    assert "LAP over 4 x 3" in text
    assert "differs in width or depth" in text  # the default null does not cover cross-size pairs
    assert "<angle> & ampersand" in text
    # Escaped: the model name is text, not a script tag.
    assert "<script>" not in html and not any(tag == "script" for tag, _ in parsed.tags)
    imgs = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(imgs) == 1
    src = imgs[0]["src"] or ""
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for _, attrs in parsed.tags:  # offline: nothing is fetched
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//")), value
    assert "<style>" in html and "<link" not in html


def test_html_report_with_raw_score_null_states_the_resolution() -> None:
    result = _result()
    result["p_empirical"] = 1 / 91
    result["null"] = {**result["null"], "name": "mine", "has_raw_scores": True, "empirical_resolution": 1 / 91, "n": 90}  # type: ignore[dict-item]
    text = " ".join(_parse(pair_report_html(result)).text)
    assert "0.011 (resolution 1/(n+1) = 0.011)" in text
    assert "cannot go below 1/(n+1) = 0.011" in text


def test_report_from_a_real_comparison(tmp_path: Path, family: dict[str, Path]) -> None:
    plot, report = tmp_path / "depth.png", tmp_path / "depth.html"
    args = ["compare", str(family["base"]), str(family["depth"]), "--json", "-q", "--plot", str(plot), "--report", str(report)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert plot.read_bytes().startswith(PNG)
    # The figure is a function of the stored result alone: redrawing it from the JSON gives the same bytes.
    assert plot_pair(result, tmp_path / "again.png").read_bytes() == plot.read_bytes()
    html = report.read_text()
    text = " ".join(_parse(html).text)
    assert f"{result['score']:.4f}" in text and f"{result['z']:.2f}" in text
    assert str(result["alignment"]["n_shared_tokens"]) in text


def test_evaluation_figures(tmp_path: Path) -> None:
    entries = [PairEntry(f"r{i}", "base", {"score": s, "z": s / 0.01}, "related") for i, s in enumerate([0.99, 0.7, 0.2])]
    entries += [PairEntry(f"n{i}", "x", {"score": s, "z": s / 0.01}, "independent") for i, s in enumerate([0.002, -0.003, 0.2, 0.0])]
    ev = evaluate(entries)
    for fn, name in ((plot_roc, "roc.png"), (plot_scores, "scores.png")):
        data = fn(ev, tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    # The dict form (as stored in evaluation.json) draws the same figure.
    assert plot_roc(ev.to_dict(), tmp_path / "roc2.png").read_bytes() == (tmp_path / "roc.png").read_bytes()
