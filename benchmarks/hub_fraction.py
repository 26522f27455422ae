"""How much of a Hub repo a lean fetch transfers, for 7B- and 70B-shaped Llama repos served locally.

The repos are served by ``tests/hubserver.py`` with the tensor names,
shapes, dtype (bf16) and shard layout of ``meta-llama/Llama-2-7b-hf`` (2
shards) and ``meta-llama/Llama-2-70b-hf`` (15 shards), tensors sorted by
name inside each shard as the safetensors writer does. Tensor data is
generated as zeros while it is sent, so a 138 GB repo needs no disk; the
fetch itself is real: Range requests over HTTP, the lean safetensors files
written to a temporary cache (about 2.4 GB for 7B and 12.6 GB for 70B; use
``--dry-run`` to read headers only) and removed afterwards.

Usage::

    python benchmarks/hub_fraction.py                 # both shapes, real fetch
    python benchmarks/hub_fraction.py --shape 70b --dry-run

Prints a Markdown table: checkpoint size, bytes fetched (counted by the
server), fraction, requests, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hubserver import HubServer, RepoFile


@dataclass(frozen=True)
class Shape:
    repo: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    shards: int


SHAPES = {
    "7b": Shape("bench/Llama-2-7b-shaped", 32000, 4096, 32, 32, 32, 11008, 2),
    "70b": Shape("bench/Llama-2-70b-shaped", 32000, 8192, 80, 64, 8, 28672, 15),
}


def tensors(s: Shape) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Llama's Hugging Face tensor names and shapes (bf16)."""
    hd = s.hidden // s.heads
    out: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("BF16", (s.vocab, s.hidden))}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = ("BF16", (s.hidden,))
        out[p + "post_attention_layernorm.weight"] = ("BF16", (s.hidden,))
        out[p + "self_attn.q_proj.weight"] = ("BF16", (s.heads * hd, s.hidden))
        out[p + "self_attn.k_proj.weight"] = ("BF16", (s.kv_heads * hd, s.hidden))
        out[p + "self_attn.v_proj.weight"] = ("BF16", (s.kv_heads * hd, s.hidden))
        out[p + "self_attn.o_proj.weight"] = ("BF16", (s.hidden, s.heads * hd))
        out[p + "mlp.gate_proj.weight"] = ("BF16", (s.ffn, s.hidden))
        out[p + "mlp.up_proj.weight"] = ("BF16", (s.ffn, s.hidden))
        out[p + "mlp.down_proj.weight"] = ("BF16", (s.hidden, s.ffn))
    out["model.norm.weight"] = ("BF16", (s.hidden,))
    out["lm_head.weight"] = ("BF16", (s.vocab, s.hidden))
    return out


def repo_files(s: Shape) -> dict[str, bytes | RepoFile]:
    """config.json, tokenizer.json, the index and virtual shards split at even byte counts in model order."""
    from awmtrace import synth

    all_tensors = tensors(s)
    sizes = {n: int(np.prod(shape)) * 2 for n, (_, shape) in all_tensors.items()}
    target = sum(sizes.values()) / s.shards
    shards: list[dict[str, tuple[str, tuple[int, ...]]]] = [{}]
    filled = 0
    for name, spec in all_tensors.items():
        if filled >= target * len(shards) and len(shards) < s.shards:
            shards.append({})
        shards[-1][name] = spec
        filled += sizes[name]
    files: dict[str, bytes | RepoFile] = {}
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        files[fname] = RepoFile.virtual_safetensors(dict(sorted(shard.items())))
        weight_map.update(dict.fromkeys(shard, fname))
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}).encode()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "torch_dtype": "bfloat16",
    }
    files["config.json"] = json.dumps(config, indent=2).encode()
    with tempfile.TemporaryDirectory() as tmp:
        synth.write_tokenizer_json(synth.byte_level_vocab(s.vocab), Path(tmp) / "tokenizer.json")
        files["tokenizer.json"] = (Path(tmp) / "tokenizer.json").read_bytes()
    return files


def run(shape: str, dry_run: bool) -> dict[str, object]:
    from huggingface_hub.utils import close_session

    from awmtrace.io import hub
    from awmtrace.pipeline import hub_tensors, open_model

    s = SHAPES[shape]
    cache = Path(tempfile.mkdtemp(prefix="awm-hub-bench-"))
    server = HubServer().start()
    try:
        server.add_repo(s.repo, repo_files(s))
        os.environ.update(HF_ENDPOINT=server.url, HF_HOME=str(cache), HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
        started = time.perf_counter()
        result = hub.fetch(s.repo, select=hub_tensors, dry_run=dry_run)
        wall = time.perf_counter() - started
        layers = None
        if result.path is not None:
            with open_model(result.path) as m:  # the lean copy resolves like the full checkpoint
                layers = m.view.n_layers
        return {
            "shape": shape,
            "mode": "dry run (headers only)" if dry_run else "fetch",
            "checkpoint_bytes": result.checkpoint_bytes,
            "served_bytes": server.bytes_served,
            "needed_bytes": result.bytes_needed,
            "fraction": server.bytes_served / result.checkpoint_bytes if not dry_run else result.fraction,
            "requests": len(server.requests),
            "wall_s": wall,
            "layers_resolved": layers,
        }
    finally:
        server.stop()
        close_session()
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--dry-run", action="store_true", help="Read headers only; report what a fetch would transfer.")
    args = ap.parse_args()
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    rows = [run(shape, args.dry_run) for shape in shapes]
    print("| shape | mode | checkpoint | fetched | fraction | requests | wall |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        fetched = r["served_bytes"] if r["mode"] == "fetch" else r["needed_bytes"]
        print(
            f"| Llama-2-{r['shape']} | {r['mode']} | {r['checkpoint_bytes'] / 1e9:.2f} GB | {fetched / 1e9:.3f} GB | "
            f"{100 * r['fraction']:.2f}% | {r['requests']} | {r['wall_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
