"""The ``awm`` command as a user (and a script) meets it: streams, exit codes, audit trail, progress, nothing truncated."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace import synth
from awmtrace._version import __version__
from awmtrace.cli import main

SHA = re.compile(r"^sha256:[0-9a-f]{64}$")


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory, family: dict[str, Path]) -> dict[str, Path]:
    """The base and an independent model under paths far longer than 80 columns."""
    root = tmp_path_factory.mktemp("long")
    folder = root.joinpath(*(["a-rather-long-folder-name-for-models"] * 3))
    folder.mkdir(parents=True)
    out = {}
    for name in ("base", "independent", "drift"):
        out[name] = folder / f"{name}-model-with-a-very-long-descriptive-name-v1.2.3"
        shutil.copytree(family[name], out[name])
    return out


def test_demo_json_is_one_object() -> None:
    r = invoke("demo", "--json", "-q")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert isinstance(d, dict) and d["schema_version"] == 1 and d["audit"]["command"].endswith("demo")
    rows = d["members"]
    assert {row["member"] for row in rows} == {"fine-tuned", "permuted", "width-pruned", "depth-pruned", "gguf-q8_0", "independent"}
    for row in rows:
        label = row["result"]["verdict"]["label"]
        assert (label == "related") == row["expected_related"], row["member"]
        if not row["expected_related"]:
            assert abs(row["result"]["score"]) < 0.01


MEMBERS = ("fine-tuned", "permuted", "width-pruned", "depth-pruned", "gguf-q8_0", "independent")


def test_demo_table_on_stdout_progress_on_stderr(tmp_path: Path) -> None:
    r = invoke("demo", "--out", str(tmp_path / "fam"), env={"AWM_PROGRESS_INTERVAL": "0"})
    assert r.exit_code == 0, r.output
    # The verdict column, row by row (a member is itself named "independent", so a bare substring test proves nothing).
    verdicts = {line.split()[0]: line.split()[-1] for line in r.stdout.splitlines() if line.split()[:1] and line.split()[0] in MEMBERS}
    assert verdicts == {m: ("independent" if m == "independent" else "related") for m in MEMBERS}, r.stdout
    assert "unexpected" not in r.stdout
    assert "Writing a synthetic model family" in r.stderr and "Writing" not in r.stdout
    assert "comparing with the base" in r.stderr and "comparing" not in r.stdout
    assert (tmp_path / "fam" / "base" / "model.safetensors").is_file()


def test_compare_json_has_the_documented_fields_and_an_audit_trail(family: dict[str, Path]) -> None:
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
    audit = d["audit"]
    assert audit["version"] == __version__ and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", audit["time_utc"])
    assert (
        audit["options"]["weights"] == "q,k" and audit["options"]["device"] == "auto" and audit["options"]["model_a"] == str(family["base"])
    )
    a, b = audit["inputs"]
    assert (a["spec"], b["spec"]) == (str(family["base"]), str(family["depth"]))
    assert SHA.match(a["fingerprint"]) and SHA.match(b["fingerprint"]) and a["fingerprint"] != b["fingerprint"]


def test_fingerprint_follows_content_not_place(tmp_path: Path, family: dict[str, Path]) -> None:
    from awmtrace.io import open_source
    from awmtrace.io.fingerprint import content_fingerprint, hub_snapshot

    copy = shutil.copytree(family["base"], tmp_path / "elsewhere")
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    with open_source(family["base"]) as s1, open_source(copy) as s2:
        assert content_fingerprint(s1, names) == content_fingerprint(s2, reversed(names))
    m = synth.random_llama(seed=0)
    m.q[0][0, 0] += 1e-3  # one weight changes
    changed = synth.write_hf(m, tmp_path / "changed")
    with open_source(family["base"]) as s1, open_source(changed) as s2:
        assert content_fingerprint(s1, names) != content_fingerprint(s2, names)
        assert content_fingerprint(s1, names[:1]) == content_fingerprint(s2, names[:1])
    gguf = synth.write_gguf(synth.random_llama(seed=0), tmp_path / "m.gguf", "Q8_0")
    with open_source(gguf) as g:
        assert len(content_fingerprint(g, ["token_embd.weight"])) == 64
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / f"{commit}+ffn" / "model.safetensors"
    assert hub_snapshot(snap) == {"repo": "org/name", "commit": commit}
    assert hub_snapshot(tmp_path) is None


def test_fail_on_gates_the_exit_code(family: dict[str, Path]) -> None:
    base, drift, other = str(family["base"]), str(family["drift"]), str(family["independent"])
    assert invoke("compare", base, drift, "-q", "--fail-on", "related").exit_code == 1
    assert invoke("compare", base, drift, "-q", "--fail-on", "inconclusive", "--json").exit_code == 1
    r = invoke("compare", base, other, "-q", "--fail-on", "related")
    assert r.exit_code == 0 and "INDEPENDENT" in r.stdout
    assert invoke("compare", base, other, "-q", "--fail-on", "inconclusive").exit_code == 0
    assert invoke("compare", base, drift, "-q").exit_code == 0  # no gate asked for


def test_exit_codes_usage_input_output(tmp_path: Path, family: dict[str, Path]) -> None:
    base = str(family["base"])
    assert invoke("compare", base).exit_code == 2  # missing argument
    assert invoke("compare", base, base, "--device", "gpu").exit_code == 2
    assert invoke("compare", base, base, "--plot", str(tmp_path / "fig.jpg")).exit_code == 2
    r = invoke("compare", base, str(tmp_path / "nope"), "-q")
    assert r.exit_code == 3 and r.stderr.startswith("error:") and r.stdout == ""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("compare", base, base, "-q", "--report", str(blocker / "sub" / "r.html"))
    assert r.exit_code == 4 and "nothing was computed" in r.stderr and r.stdout == ""
    made = tmp_path / "new" / "folder" / "r.html"  # parents are created
    r = invoke("compare", base, base, "-q", "--report", str(made))
    assert r.exit_code == 0 and made.is_file() and "report written to" in r.stderr


def test_a_result_is_never_lost_when_writing_fails(tmp_path: Path, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import awmtrace.report.html as html

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(html, "write_pair_report", broken)
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--json", "--report", str(tmp_path / "r.html"))
    assert r.exit_code == 4
    assert json.loads(r.stdout)["verdict"]["label"] == "related"  # printed anyway
    assert "could not write the report" in r.stderr and "No space left" in r.stderr


def test_unexpected_errors_are_one_line_naming_the_input(family: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import awmtrace.cli.compare as cli_compare

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot reshape array of size 7\nsecond line")

    monkeypatch.setattr(cli_compare, "compare_models", boom)
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q")
    assert r.exit_code == 70
    assert "Traceback" not in r.output and r.stderr.count("\n") == 1
    assert "ValueError" in r.stderr and str(family["drift"]) in r.stderr and "-v" in r.stderr and "second line" not in r.stderr
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "-v")  # -v after the subcommand
    assert r.exit_code == 70 and "Traceback" in r.stderr


def test_verbose_after_the_subcommand(family: dict[str, Path]) -> None:
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "-vv", "--json")
    assert r.exit_code == 0, r.output
    assert "DEBUG" in r.stderr or "INFO" in r.stderr
    json.loads(r.stdout)


def test_notes_go_to_stderr_once(family: dict[str, Path]) -> None:
    r = invoke("compare", str(family["base"]), str(family["width"]), "-q")
    assert r.exit_code == 0, r.output
    assert "note:" not in r.stdout and "note:" in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(lines) == len(set(lines))
    assert "PyTorch is not installed" not in r.output


def test_nothing_is_truncated_at_80_columns(deep: dict[str, Path]) -> None:
    env = {"COLUMNS": "80"}
    r = invoke("compare", str(deep["base"]), str(deep["independent"]), "-q", "--per-layer", env=env)
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and "..." not in r.stdout
    verdict = r.stdout.strip().splitlines()[-1]
    assert verdict.startswith("INDEPENDENT") and str(deep["base"]) in verdict and str(deep["independent"]) in verdict
    # Table cells wrap: reading each model column down its lines gives the whole path back.
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "A (candidate base)" in line)
    col_a, col_b = lines[head].index("A (candidate base)"), lines[head].index("B (suspect)")
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith("format"))
    cells = lines[head + 2 : end]
    assert "".join(line[col_a:col_b].strip() for line in cells) == str(deep["base"])
    assert "".join(line[col_b:].strip() for line in cells) == str(deep["independent"])
    assert all(len(line) <= 80 for line in lines[:-1])


def test_device_accepts_what_the_backend_accepts(family: dict[str, Path]) -> None:
    pytest.importorskip("torch")
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--json", "--device", "torch-cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["device"] == "torch-cpu"
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--device", "cuda:1")
    import torch

    if not torch.cuda.is_available():
        assert r.exit_code == 3 and "cuda:1 is not available" in r.stderr  # parsed, then refused by the backend


def test_progress_on_stderr_periodic_lines_and_switches(family: dict[str, Path]) -> None:
    args = ("compare", str(family["base"]), str(family["drift"]), "--json")
    loud = invoke(*args, env={"AWM_PROGRESS_INTERVAL": "0"})
    assert loud.exit_code == 0
    assert f"opening A: {family['base']} ..." in loud.stderr and "scoring layers ..." in loud.stderr
    assert re.search(r"scoring layers: \d+/\d+ \(\d+%\)", loud.stderr)  # a periodic line with done/total
    json.loads(loud.stdout)  # stdout stays pure JSON
    for env, extra in (({}, ("-q",)), ({"AWM_NO_PROGRESS": "1"}, ())):
        quiet = invoke(*args, *extra, env=env)
        assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_no_color_is_honoured(family: dict[str, Path]) -> None:
    args = ("compare", str(family["base"]), str(family["drift"]), "-q")
    coloured = invoke(*args, env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"})
    plain = invoke(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[31" in coloured.stdout or "\x1b[1;31" in coloured.stdout  # the red RELATED
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", plain.stdout)


def test_inspect_shows_shapes_types_and_explains_columns(family: dict[str, Path]) -> None:
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
    q = d["tensors"]["layers"][2]["q"]
    assert q["name"] == "model.layers.2.self_attn.q_proj.weight" and q["shape"] == [256, 256] and q["dtype"] == "F32"
    assert SHA.match(d["audit"]["inputs"][0]["fingerprint"])
    text = invoke("inspect", str(family["base"]), env={"COLUMNS": "80"}).stdout
    assert "model.embed_tokens.weight" in text and "hidden_size" in text and "2048x256" in text
    for header in ("role:", "tensor (found by):", "shape:", "type:", "cut:"):
        assert header in text
    assert "None" not in text


def test_inspect_gguf_shows_quant_types_and_general_metadata(tmp_path: Path) -> None:
    gguf = synth.write_gguf(synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512), tmp_path / "m.gguf", "Q8_0")
    r = invoke("inspect", str(gguf), env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "Q8_0" in r.stdout and "general.architecture" in r.stdout and "None" not in r.stdout
    d = json.loads(invoke("inspect", str(gguf), "--json").stdout)
    assert d["general"]["general.architecture"] == "llama"
    assert d["tensors"]["layers"][0]["q"]["dtype"] == "Q8_0"


def test_awm_report_rebuilds_page_and_figure_from_a_saved_result(tmp_path: Path, family: dict[str, Path]) -> None:
    saved = tmp_path / "result.json"
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--json")
    saved.write_text(r.stdout)
    page, fig = tmp_path / "out" / "page.html", tmp_path / "out" / "fig.svg"
    r = invoke("report", str(saved), "-o", str(page), "--plot", str(fig))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("RELATED") and str(family["drift"]) in r.stdout
    html = page.read_text()
    fingerprint = json.loads(saved.read_text())["audit"]["inputs"][0]["fingerprint"]
    assert "Audit trail" in html and fingerprint in html and __version__ in html
    assert fig.read_text().lstrip().startswith(("<?xml", "<svg"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = invoke("report", str(bad), "-o", str(tmp_path / "x.html"))
    assert r.exit_code == 3 and "not an awmtrace pair result" in r.stderr


@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_plot_writes_the_format_its_extension_names(tmp_path: Path, family: dict[str, Path], ext: str, magic: bytes) -> None:
    out = tmp_path / f"fig.{ext}"
    r = invoke("compare", str(family["base"]), str(family["drift"]), "-q", "--plot", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(magic)


def test_models_dir_finds_flat_files(tmp_path: Path) -> None:
    from awmtrace.suites import locate_model

    (tmp_path / "m").mkdir()
    flat = tmp_path / "m" / "tiny.gguf"
    flat.write_bytes(b"GGUF")
    assert locate_model("tiny", None, tmp_path / "m", fetch=False) == flat
    assert locate_model("x", "org/tiny", tmp_path / "m", fetch=False) == flat


def test_help_has_examples_and_exit_codes() -> None:
    commands = [
        ["compare"],
        ["inspect"],
        ["demo"],
        ["report"],
        ["fetch"],
        ["calibrate"],
        ["evaluate"],
        ["suite", "run"],
        ["suite", "report"],
        ["suite", "list"],
        ["suite", "show"],
    ]
    for cmd in commands:
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout and "Exit codes:" in r.stdout, cmd
    top = invoke("--help").stdout
    assert "_AWM_COMPLETE" in top and "AWM_NO_PROGRESS" in top and re.search(r"130\s+interrupted", top)


def test_version_and_python_m() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"awm, version {__version__}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-m", "awmtrace", "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and f"awm, version {__version__}" in out.stdout
    completion = subprocess.run(
        [sys.executable, "-m", "awmtrace"], capture_output=True, text=True, env={**env, "_AWM_COMPLETE": "bash_source"}, timeout=60
    )
    assert completion.returncode == 0 and "_awm_completion" in completion.stdout and "complete " in completion.stdout


@pytest.fixture(scope="module")
def suite_files(tmp_path_factory: pytest.TempPathFactory, deep: dict[str, Path]) -> dict[str, Path]:
    """A two-pair suite over models with long names (one kept as a flat folder name), and its store."""
    root = tmp_path_factory.mktemp("suite")
    long_a, long_b, long_c = (f"{n}-model-7b-chat-hf-v1.2" for n in ("base", "drift", "stranger"))
    suites = {
        "suites": {
            "longnames": {
                "category": "SFT",
                "label": "related",
                "models": {long_a: None, long_b: None, long_c: None},
                "pairs": [[long_a, long_b], [long_a, long_c]],
            }
        }
    }
    (root / "suites.json").write_text(json.dumps(suites))
    models = root / "models"
    models.mkdir()
    for name, src in ((long_a, deep["base"]), (long_b, deep["drift"]), (long_c, deep["independent"])):
        (models / name).symlink_to(src, target_is_directory=True)
    return {"suites": root / "suites.json", "models": models, "store": root / "r.sqlite", "names": [long_a, long_b, long_c]}  # type: ignore[dict-item]


def test_suite_run_announces_pairs_and_gates(suite_files: dict[str, Path]) -> None:
    common = ["--suites", str(suite_files["suites"]), "--store", str(suite_files["store"])]
    r = invoke("suite", "run", "longnames", "--models-dir", str(suite_files["models"]), "--device", "cpu", "--no-fetch", *common)
    assert r.exit_code == 0, r.output
    a, b, c = suite_files["names"]  # type: ignore[misc]
    announce, done = f"[1/2] {a} vs {b} ...", f"[1/2] {a} vs {b}: score"
    assert announce in r.stderr and done in r.stderr
    assert r.stderr.index(announce) < r.stderr.index(done) < r.stderr.index(f"[2/2] {a} vs {c} ...")
    again = invoke("suite", "run", "longnames", "--models-dir", str(suite_files["models"]), "--no-fetch", "--fail-on", "related", *common)
    assert again.exit_code == 1 and "already stored" in again.stderr  # one stored pair is related
    assert invoke("suite", "report", "longnames", "--fail-on", "related", *common).exit_code == 1


def test_suite_report_table_is_readable_at_80_columns(suite_files: dict[str, Path]) -> None:
    common = ["--suites", str(suite_files["suites"]), "--store", str(suite_files["store"])]
    invoke("suite", "run", "longnames", "--models-dir", str(suite_files["models"]), "--no-fetch", "-q", *common)
    r = invoke("suite", "report", "longnames", *common, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    for name in suite_files["names"]:  # type: ignore[attr-defined]
        assert name in r.stdout  # whole, on one line: names that fit the column are never folded
    assert "…" not in r.stdout
    assert re.search(r"independent \*", r.stdout)  # the stranger's verdict differs from the suite's label
    wide = invoke("suite", "report", "longnames", *common, env={"COLUMNS": "200"})
    header = next(line for line in lines if line.lstrip().startswith("pair"))
    assert "score_q" not in header and re.search(r"^\s*base\s+offspring\s+score_q", wide.stdout, re.M)


def test_progress_bars_with_eta_on_a_terminal(family: dict[str, Path]) -> None:
    # FORCE_COLOR makes rich treat stderr as a terminal: bars (transient, redrawn) with elapsed time and ETA.
    r = invoke(
        "compare", str(family["base"]), str(family["drift"]), "--json", env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    )
    assert r.exit_code == 0, r.output
    assert "━" in r.stderr and "eta" in r.stderr and "scoring layers" in r.stderr and "opening A" in r.stderr
    json.loads(r.stdout)
