"""Lean Hub fetching against a local stand-in of the Hub (tests/hubserver.py)."""

from __future__ import annotations

import errno
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from awmtrace import synth
from awmtrace.cli import main
from awmtrace.errors import FormatError, HubError, InputNotFound
from awmtrace.io import hub
from awmtrace.pipeline import compare, hub_tensors, open_model

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import Fault, HubServer, serving


def fetch(spec: str, **kwargs: object) -> hub.FetchResult:
    """What a comparison fetches: the tensors the pipeline's selector names."""
    return hub.fetch(spec, select=hub_tensors, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small checkpoints whose FFN dwarfs attention (so a lean fetch is a small fraction)."""
    root = tmp_path_factory.mktemp("hubmodels")
    m = synth.random_llama(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512, ffn=4096, seed=0)
    out = {
        "big": synth.write_hf(m, root / "big", shards=2),
        "bf16": synth.write_hf(synth.drift(m, 0.05), root / "bf16", dtype="bfloat16"),
    }
    # A sidecar the vocabulary reader may consult, and a second tokenizer file it would not pick.
    (out["big"] / "tokenizer_config.json").write_text('{"added_tokens_decoder": {}}')
    (out["big"] / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(m.tokens)}))
    return out


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models: dict[str, Path]) -> Iterator[HubServer]:
    with serving(monkeypatch, tmp_path / "hf") as srv:
        srv.add_folder("acme/big", models["big"])
        srv.add_folder("acme/bf16", models["bf16"])
        srv.add_folder("acme/gated", models["big"], gated=True, tokens=("hf_good",))
        yield srv


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def _snapshots(tmp_path: Path, repo: str = "acme/big") -> list[Path]:
    d = tmp_path / "hf" / "awmtrace" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return sorted(d.iterdir()) if d.is_dir() else []


def _lean_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="numpy") as h:
            names.update(h.keys())
    return names


def test_fetch_transfers_a_small_fraction_and_scores_like_the_full_copy(server: HubServer, models: dict[str, Path]) -> None:
    result = fetch("acme/big")
    full = _weights_bytes(models["big"])
    checkpoint = full - (models["big"] / "vocab.json").stat().st_size
    assert result.source == "fetched"
    assert result.bytes_fetched == server.bytes_served
    assert server.bytes_served < 0.05 * full
    assert result.repo_bytes == full and result.checkpoint_bytes == checkpoint
    assert result.fraction == pytest.approx(server.bytes_served / checkpoint)
    assert sorted(p.name for p in result.path.iterdir()) == [
        "awm-fetch.json", "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    names = _lean_names(result.path)
    assert "model.embed_tokens.weight" in names
    assert {n.split(".")[-2] for n in names if n.startswith("model.layers.")} == {"q_proj", "k_proj", "input_layernorm"}
    assert not (result.path / "model.safetensors.index.json").exists()
    pair = compare(models["big"], "acme/big")
    assert pair.score >= 0.99
    assert pair.b["norms"]["folded"] and pair.b["norms"]["missing_layers"] == []  # the lean copy keeps the norm gains
    assert pair.b["spec"] == "acme/big"


def test_second_fetch_comes_from_the_cache_and_a_commit_needs_no_request(server: HubServer) -> None:
    first = fetch("acme/big")
    server.reset_counts()
    again = fetch("acme/big")
    assert again.source == "awmtrace-cache" and again.path == first.path and server.bytes_served == 0
    server.reset_counts()
    pinned = fetch(f"acme/big@{first.commit}")
    assert pinned.path == first.path and server.requests == []


def test_bf16_lean_copy_reads_back_the_same_values(server: HubServer, models: dict[str, Path]) -> None:
    path = hub.ensure_local("acme/bf16")
    with open_model(path) as lean, open_model(models["bf16"]) as full:
        for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"):
            np.testing.assert_array_equal(lean.source.read(name), full.source.read(name))


def test_a_dropped_connection_is_resumed_within_the_call(server: HubServer, models: dict[str, Path]) -> None:
    server.faults.append(Fault("model-00001", "drop", after=20_000, times=2))
    result = fetch("acme/big")
    assert result.source == "fetched"
    assert all(f.times == 0 for f in server.faults)
    # Resumed with Range from where each drop stopped: nothing sent twice.
    assert server.bytes_served == result.bytes_fetched == result.bytes_needed
    assert compare(models["big"], "acme/big").score >= 0.99


def test_an_interrupted_fetch_resumes_in_the_next_run(server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.http, "MAX_RETRIES", 0)
    server.faults.append(Fault("model-00001", "drop", after=30_000, times=1))
    with pytest.raises(HubError, match="run the same command again to resume"):
        fetch("acme/big")
    assert _snapshots(tmp_path) == []
    parts = list((tmp_path / "hf" / "awmtrace" / "models--acme--big" / "partial").rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 30_000
    with pytest.raises(HubError, match="not in the cache"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        fetch("acme/big")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    first_run = server.bytes_served
    server.reset_counts()
    result = fetch("acme/big")
    assert result.source == "fetched"
    # Only the rest was sent again (plus the headers read to plan the fetch).
    assert server.bytes_served < result.bytes_needed - 30_000 + 4096
    assert first_run + server.bytes_served < result.bytes_needed + 2 * 4096 + 30_000


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        (Fault("model-00001", "content-range", times=None), HubError, "Content-Range|server sent bytes"),
        (Fault("model-00001", "short", times=None), HubError, "Content-Length"),
        (Fault("model-00001", "full", times=None), HubError, "instead of 206"),
        (Fault("model-00001", "etag", times=None), HubError, "changed"),
        (Fault("model-00001", "header", start=8), FormatError, "bad safetensors header"),
        (Fault("tokenizer.json", "flip"), HubError, "sha1 .* does not match"),
    ],
    ids=["content-range", "short", "ignored-range", "etag", "header", "flipped-byte-whole-file"],
)
def test_a_corrupted_transfer_is_rejected_and_never_cached(
    server: HubServer, tmp_path: Path, fault: Fault, error: type[Exception], match: str
) -> None:
    server.faults.append(fault)
    with pytest.raises(error, match=match) as info:
        fetch("acme/big")
    assert "\n" not in str(info.value)
    assert _snapshots(tmp_path) == []
    server.faults.clear()
    assert fetch("acme/big").source == "fetched"


def test_offline_mode_uses_the_cache_and_fails_clearly_otherwise(
    server: HubServer, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = fetch("acme/big")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server.reset_counts()
    offline = fetch("acme/big")
    assert offline.path == fetched.path and offline.source == "awmtrace-cache"
    assert compare(models["big"], "acme/big").score >= 0.99
    assert server.requests == []
    with pytest.raises(HubError, match=r"acme/bf16: not a local path, not in the cache .*HF_HUB_OFFLINE") as info:
        fetch("acme/bf16")
    assert "\n" not in str(info.value)


def test_a_full_snapshot_in_the_hugging_face_cache_is_used_as_is(
    server: HubServer, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = server.repos["acme/bf16"].commit
    repo = tmp_path / "hf" / "hub" / "models--acme--bf16"
    shutil.copytree(models["bf16"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert fetch("acme/bf16").source == "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = fetch("acme/bf16")
    assert result.source == "hf-cache" and result.path == repo / "snapshots" / commit
    assert server.bytes_served == 0


def test_a_server_that_cannot_be_reached_falls_back_to_the_cache(server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.utils import close_session

    fetched = fetch("acme/big")
    server.stop()
    close_session()  # a kept-alive connection would still reach the stopped server's handler thread
    assert fetch("acme/big").path == fetched.path
    with pytest.raises(HubError, match="cannot reach") as info:
        fetch("acme/bf16")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "token", "match"),
    [
        ("acme/nope", None, r"acme/nope: repository not found .*HTTP 401"),
        ("acme/nope", "hf_any", r"acme/nope: repository not found .*HTTP 404"),
        ("acme/gated", None, r"acme/gated: gated repository \(HTTP 401\).*HF_TOKEN"),
        ("acme/gated", "hf_wrong", r"acme/gated: gated repository \(HTTP 403\)"),
        ("acme/big@v9", None, r"revision 'v9' not found \(HTTP 404\)"),
        ("acme//big", None, "not a Hugging Face repo id"),
        ("acme/big--x", None, "not a Hugging Face repo id"),
    ],
)
def test_hub_errors_are_one_line(server: HubServer, monkeypatch: pytest.MonkeyPatch, spec: str, token: str | None, match: str) -> None:
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(HubError, match=match) as info:
        fetch(spec)
    assert "\n" not in str(info.value)
    res = CliRunner().invoke(main, ["fetch", spec])
    assert res.exit_code == 3
    assert res.output.strip().startswith("error:") and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2  # rich may wrap one line at 80 columns


def test_a_gated_repo_works_with_a_granted_token(server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert fetch("acme/gated").source == "fetched"


def test_disk_full_leaves_no_corrupt_cache(server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = {"n": 0}
    real_write = hub.download._write

    def write(fh: object, chunk: bytes) -> None:
        written["n"] += len(chunk)
        if written["n"] > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fh, chunk)

    monkeypatch.setattr(hub.download, "_write", write)
    with pytest.raises(HubError, match="disk full") as info:
        fetch("acme/big")
    assert "\n" not in str(info.value)
    assert _snapshots(tmp_path) == []
    leftovers = list((tmp_path / "hf" / "awmtrace" / "models--acme--big" / "partial").rglob("*.part"))
    assert leftovers == []
    monkeypatch.setattr(hub.download, "_write", real_write)
    assert fetch("acme/big").source == "fetched"


def test_repos_without_usable_weights_say_so(server: HubServer, models: dict[str, Path]) -> None:
    server.add_repo("acme/readme", {"README.md": b"# nothing"})
    server.add_repo("acme/quants", {"m-Q4_K.gguf": b"GGUF" + bytes(60), "m-Q8_0.gguf": b"GGUF" + bytes(60)})
    server.add_repo("acme/garbage", {"config.json": (models["big"] / "config.json").read_bytes(), "model.safetensors": b"\xff" * 64})
    with pytest.raises(InputNotFound, match="no safetensors or pytorch .bin weights"):
        fetch("acme/readme")
    with pytest.raises(InputNotFound, match="only GGUF files"):
        fetch("acme/quants")
    with pytest.raises(FormatError, match="does not fit the file"):
        fetch("acme/garbage")


def test_ffn_fetch_keeps_the_ffn_inputs(server: HubServer, models: dict[str, Path]) -> None:
    lean = fetch("acme/big")
    with_ffn = fetch("acme/big", ffn=True)
    assert with_ffn.path != lean.path and with_ffn.bytes_needed > 5 * lean.bytes_needed
    names = _lean_names(with_ffn.path)
    assert any("up_proj" in n for n in names) and any("gate_proj" in n for n in names)
    assert not any("down_proj" in n or "v_proj" in n for n in names)
    result = compare(models["big"], with_ffn.path, weights="q,k,up,gate")
    assert result.ffn is not None and result.ffn["score_up"] >= 0.99
    # An attention-only request is content with either copy.
    assert fetch("acme/big").path == lean.path


def test_bin_checkpoints_are_fetched_whole_and_hash_checked(server: HubServer, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    m = synth.random_llama(hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab=300, seed=3)
    folder = synth.write_hf(m, tmp_path / "binsrc")
    state = {k: torch.from_numpy(v.copy()) for k, v in synth.hf_tensors(m).items()}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    server.add_folder("acme/bin", folder)
    result = fetch("acme/bin")
    assert result.fraction == pytest.approx(1.0, abs=0.01)
    assert any("fetched whole" in n for n in result.notes)
    verified = {f["name"]: f["verified"] for f in result.files}
    assert verified["pytorch_model.bin"].startswith("size and sha256")
    assert compare(folder, "acme/bin", min_shared_tokens=32).score >= 0.99


def test_dry_run_reads_headers_only(server: HubServer, tmp_path: Path) -> None:
    result = fetch("acme/big", dry_run=True)
    assert result.path is None and result.source == "dry-run"
    assert server.bytes_served < 8192 and 0 < result.fraction < 0.05
    assert _snapshots(tmp_path) == []


def test_a_damaged_snapshot_is_fetched_again(server: HubServer) -> None:
    first = fetch("acme/big")
    victim = next(first.path.glob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-10])
    again = fetch("acme/big")
    recorded = {f["name"]: f["size"] for f in json.loads((again.path / hub.MANIFEST_NAME).read_text())["files"]}
    assert again.source == "fetched" and victim.stat().st_size == recorded[victim.name]
    # Same size, altered bytes: only --verify (re-hashing) notices.
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert fetch("acme/big").source == "awmtrace-cache"
    assert fetch("acme/big", verify=True).source == "fetched"
    assert victim.read_bytes()[-1] == data[-1] ^ 0xFF


def test_awm_fetch_reports_the_fraction(server: HubServer) -> None:
    res = CliRunner().invoke(main, ["fetch", "acme/big", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)["results"][0]
    assert data["source"] == "fetched" and 0 < data["fraction"] < 0.05
    res = CliRunner().invoke(main, ["fetch", "acme/big", "acme/nope"])
    assert res.exit_code == 5  # incomplete: one id failed
    assert "cached" in res.output and "repository not found" in res.output


def test_a_gguf_repo_is_named_by_file_or_quant_like_llama_cpp(server: HubServer, tmp_path: Path) -> None:
    m = synth.random_llama(hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab=300, seed=5)
    q8 = synth.write_gguf(m, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    f32 = synth.write_gguf(m, tmp_path / "tiny-F32.gguf", "F32")
    server.add_repo("acme/tiny-GGUF", {q8.name: q8.read_bytes(), f32.name: f32.read_bytes(), "README.md": b"# quants"})
    by_quant = fetch("acme/tiny-GGUF:Q8_0")
    assert by_quant.source == "fetched" and by_quant.file == "tiny-Q8_0.gguf"
    # The one GGUF file and the model card (lineage evidence for awm matrix), nothing else.
    assert sorted(p.name for p in by_quant.path.iterdir()) == ["README.md", "awm-fetch.json", "tiny-Q8_0.gguf"]
    assert (by_quant.path / "tiny-Q8_0.gguf").read_bytes() == q8.read_bytes()
    assert fetch("acme/tiny-GGUF:tiny-Q8_0.gguf").path == by_quant.path  # same file, same snapshot
    assert fetch("acme/tiny-gguf:q8_0".replace("gguf", "GGUF")).path == by_quant.path  # tags match case-insensitively
    by_file = fetch("acme/tiny-GGUF:tiny-F32.gguf")
    assert by_file.path != by_quant.path and by_file.file == "tiny-F32.gguf"
    assert compare(f32, "acme/tiny-GGUF:Q8_0", min_shared_tokens=32).score >= 0.99
    assert hub.snapshot_identity(by_quant.path).endswith(":tiny-Q8_0.gguf")
    with pytest.raises(InputNotFound, match=r"no file matches; the repo holds tiny-F32.gguf, tiny-Q8_0.gguf"):
        fetch("acme/tiny-GGUF:Q4_K_M")
    with pytest.raises(InputNotFound, match=r"only GGUF files \(2, e.g. tiny-F32.gguf\); name one as acme/tiny-GGUF:tiny-F32.gguf"):
        fetch("acme/tiny-GGUF")


@pytest.mark.parametrize(
    "spec",
    ["hf://acme/big", "https://huggingface.co/acme/big", "https://huggingface.co/acme/big/tree/main", "{endpoint}/acme/big/tree/main"],
)
def test_hub_addresses_name_the_same_repo(server: HubServer, spec: str) -> None:
    plain = fetch("acme/big")
    spec = spec.format(endpoint=server.url)
    assert hub.looks_like_repo_id(spec)
    assert fetch(spec).path == plain.path
    assert compare(plain.path, spec).score >= 0.99


def test_hub_addresses_parse_to_repo_revision_and_file() -> None:
    assert hub.parse_repo_id("https://huggingface.co/acme/big/tree/v1.0") == hub.RepoRef("acme/big", "v1.0")
    assert hub.parse_repo_id("https://hf.co/acme/big/blob/main/m-Q8_0.gguf") == hub.RepoRef("acme/big", "main", "m-Q8_0.gguf")
    assert hub.parse_repo_id("acme/big@v2:Q4_K_M") == hub.RepoRef("acme/big", "v2", "Q4_K_M")
    assert hub.parse_repo_id("gpt2") == hub.RepoRef("gpt2")
    for bad in ("https://example.com/acme/big", "acme/big:../../etc/passwd", "acme/big:not a tag"):
        with pytest.raises(HubError, match="not a Hugging Face repo id"):
            hub.parse_repo_id(bad)
    assert not hub.looks_like_repo_id("model.safetensors") and not hub.looks_like_repo_id("/no/such/dir")
    assert hub.looks_like_repo_id("gpt2") and hub.looks_like_repo_id("acme/big:Q8_0")


def test_a_legacy_single_name_repo(server: HubServer, models: dict[str, Path], tmp_path: Path) -> None:
    server.add_folder("gpt2", models["bf16"])
    result = fetch("gpt2")
    assert result.source == "fetched" and result.path.parent.parent.name == "models--gpt2"
    assert compare(models["bf16"], "gpt2").score >= 0.99
    assert hub.snapshot_identity(result.path) == f"hf:gpt2@{result.commit}"


def test_a_repo_with_one_gguf_needs_no_name_and_is_cached(server: HubServer, tmp_path: Path) -> None:
    m = synth.random_llama(hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab=300, seed=6)
    q8 = synth.write_gguf(m, tmp_path / "solo-Q8_0.gguf", "Q8_0")
    server.add_repo("acme/solo", {q8.name: q8.read_bytes()})
    first = fetch("acme/solo")
    assert first.source == "fetched" and first.file == "solo-Q8_0.gguf"
    assert fetch("acme/solo").source == "awmtrace-cache"


def test_a_listing_that_names_paths_outside_the_repo_is_refused(server: HubServer, tmp_path: Path) -> None:
    server.add_repo("acme/evil", {"config.json": b"{}", "../../escape.safetensors": b"x" * 16})
    with pytest.raises(HubError, match=r"lists a file named '\.\./\.\./escape\.safetensors', which is not a plain relative path"):
        fetch("acme/evil")
    assert not list(tmp_path.rglob("escape*"))


@pytest.mark.parametrize("bad", ["../../evil.safetensors", "/tmp/evil.safetensors", "sub\\..\\..\\evil.safetensors"])
def test_an_index_that_names_shards_outside_the_repo_is_refused(
    server: HubServer, models: dict[str, Path], tmp_path: Path, bad: str
) -> None:
    shard = models["big"] / "model-00001-of-00002.safetensors"
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard.name, "model.norm.weight": bad}}
    server.add_repo(
        "acme/hostile",
        {
            "config.json": (models["big"] / "config.json").read_bytes(),
            "model.safetensors.index.json": json.dumps(index).encode(),
            shard.name: shard.read_bytes(),
        },
    )
    with pytest.raises(FormatError, match=r"refused shard name .*evil\.safetensors.* inside its own directory") as info:
        fetch("acme/hostile")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*evil*")) and not Path("/tmp/evil.safetensors").exists()
    # Refused before any weight byte was asked for: only the listing and the index itself were read.
    assert not any(shard.name in path for _, path, _ in server.requests)


@pytest.mark.parametrize("body", [b'{"weight_map": {"a": "m.safetensors"}, "x": 1e999}', b"[" * 100_000, b"\xff\xfe"])
def test_hub_json_goes_through_the_local_readers_checks(server: HubServer, models: dict[str, Path], body: bytes) -> None:
    server.add_repo(
        "acme/badjson",
        {"config.json": (models["big"] / "config.json").read_bytes(), "model.safetensors.index.json": body, "m.safetensors": b"x" * 16},
    )
    with pytest.raises(FormatError, match=r"acme/badjson@\w+: model\.safetensors\.index\.json: JSON file (holds|is)") as info:
        fetch("acme/badjson")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"sha": "' + b"a" * 40 + b'", "siblings": [{"rfilename": "config.json", "size": 1e999}]}', "not finite"),
        (b'{"sha": "' + b"a" * 40 + b'", "siblings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"sha": "' + b"a" * 40 + b'", "siblings": [{"rfilename": "config.json", "size": -5}]}', "lists config.json without a size"),
        (b'{"sha": "' + b"a" * 40 + b'", "siblings": [{"rfilename": "a/../../x.json", "size": 2}]}', "not a plain relative path"),
    ],
)
def test_repo_info_is_read_with_the_local_readers_checks(server: HubServer, tmp_path: Path, body: bytes, match: str) -> None:
    server.add_repo("acme/liar", {"config.json": b"{}"}).info_body = body
    with pytest.raises(HubError, match=match) as info:
        fetch("acme/liar")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("x.json"))
