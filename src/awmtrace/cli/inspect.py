"""``awm inspect``: what a checkpoint is and how every tensor the method reads was found.

The tensor table is built from :data:`TENSOR_COLUMNS`, a list of (header,
explanation, cell function): adding a column is one entry, and its
explanation is printed under the table with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    add_columns,
    console,
    emit_json,
    epilog,
    escape,
    friendly_errors,
    json_option,
    note,
    progress_reporter,
    record_model,
    table,
)
from awmtrace.pipeline import open_model
from awmtrace.report.text import fmt_value

Cell = Callable[[dict[str, Any]], str]


def _cut(ref: dict[str, Any]) -> str:
    cut = f"{ref['part']} of {ref['layout']}" if "part" in ref else ""
    if ref.get("transposed"):
        cut = (cut + " (Conv1D, transposed)").strip()
    if ref.get("expert") is not None:
        cut = (cut + f" expert {ref['expert']}" + (f" (+{ref['more_experts']} more)" if ref.get("more_experts") else "")).strip()
    return cut or "-"


#: Columns of the tensor table: header, what it means, how to fill it from a tensor entry of ``inspect --json``.
TENSOR_COLUMNS: list[tuple[str, str, Cell]] = [
    ("role", "what the method uses the tensor for, in GGUF's role names (blk.N = layer N)", lambda r: r["role"]),
    (
        "tensor (found by)",
        "the tensor's name in the checkpoint and, below it, how it was recognised: gguf's name table, architectures.toml, "
        "or a native GGUF name",
        lambda r: f"{r['name']}\n({r['how']})",
    ),
    (
        "shape",
        "stored shape in numpy order (rows = outputs, columns = hidden inputs)",
        lambda r: "x".join(map(str, r.get("shape") or ())) or "-",
    ),
    ("type", "stored element type or quantisation (F32, BF16, Q8_0, ...)", lambda r: fmt_value(r.get("dtype"))),
    ("cut", "the slice taken from a fused QKV tensor, a transposed Conv1D, or the MoE expert; - when used whole", _cut),
]


def _with_storage(ref: dict[str, Any], source: Any) -> dict[str, Any]:
    try:
        return {**ref, "shape": list(source.shape(ref["name"])), "dtype": source.dtype(ref["name"])}
    except Exception:  # noqa: BLE001 - a tensor the reader cannot describe still gets listed
        return {**ref, "shape": None, "dtype": None}


def _describe(path: str, model: Any) -> dict[str, Any]:
    """``view.to_dict()`` plus each tensor's shape and stored type, the format's general.* metadata and counts."""
    source = model.source
    data = model.view.to_dict()
    tensors = data["tensors"]
    tensors["embedding"] = _with_storage(tensors["embedding"], source)
    for layer in tensors["layers"]:
        for key, value in list(layer.items()):
            if isinstance(value, dict) and "name" in value:
                layer[key] = _with_storage(value, source)
            elif isinstance(value, list):
                layer[key] = [_with_storage(r, source) for r in value]
    data["spec"] = path
    data["n_tokens"] = len(model.vocab) if model.vocab is not None else None
    data["tokenizer_error"] = str(model.vocab_error) if model.vocab_error else None
    data["n_tensors_in_checkpoint"] = len(source.names())
    data["general"] = {k: _plain(v) for k, v in sorted((source.metadata or {}).items()) if k.startswith("general.")}
    config = source.config or {}
    data["config"] = {k: _plain(config[k]) for k in ("model_type", "torch_dtype", "transformers_version") if k in config}
    return data


def _plain(value: Any) -> Any:
    """A metadata value as JSON: numpy scalars and arrays as numbers and lists, bytes as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _norm_summary(d: dict[str, Any]) -> str:
    """The norm kind, how its gain is stored, and which layers lack the tensor (their Q/K are scored unfolded)."""
    kind = d.get("norm_kind", "none")
    if kind == "none":
        return "none (non-parametric, or not in front of Q/K): nothing to fold"
    text = {"rms": "RMSNorm", "layer": "LayerNorm"}.get(kind, kind)
    if d.get("norm_offset"):
        text += f" (gain = {d['norm_offset']:g} + stored weight)"
    missing = [layer["index"] for layer in d["tensors"]["layers"] if "attn_norm" not in layer]
    text += "; its gain is folded into Q/K"
    if missing:
        text += f"; no norm tensor in layer(s) {', '.join(map(str, missing))} (scored unfolded)"
    return text


def _summary_table(path: str, d: dict[str, Any]) -> Any:
    t = table(show_header=False, title=escape(path))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    unstated = "not stated in the checkpoint"
    rows = [
        ("format", d["format"]),
        (
            "architecture",
            f"{d['architecture']} (family {d['family']}" + (f", chosen because {d['family_reason']})" if d["family_reason"] else ")"),
        ),
        ("hidden_size", d["hidden_size"]),
        ("n_layers", d["n_layers"]),
        ("n_heads", fmt_value(d["n_heads"], unstated)),
        ("n_kv_heads", fmt_value(d["n_kv_heads"], unstated)),
        ("head_dim", fmt_value(d["head_dim"], unstated)),
        ("vocab_size", f"{d['vocab_size']} embedding rows"),
        ("norm", _norm_summary(d)),
        ("tokenizer", d["tokenizer_source"] or (d["tokenizer_error"] or "none found (use --align ids)")),
        ("tokens", fmt_value(d["n_tokens"], "none (no tokenizer)")),
        ("tensors in file", d["n_tensors_in_checkpoint"]),
    ]
    rows += [(k, fmt_value(v)) for k, v in {**d["config"], **d["general"]}.items()]
    for k, v in rows:
        t.add_row(escape(k), escape(str(v)))
    return t


def _tensor_rows(d: dict[str, Any], all_tensors: bool) -> tuple[list[dict[str, Any]], int]:
    rows = [d["tensors"]["embedding"]]
    layers = d["tensors"]["layers"]
    shown = layers if all_tensors or len(layers) <= 2 else [layers[0], layers[-1]]
    for layer in shown:
        for key, value in layer.items():
            if isinstance(value, dict) and "name" in value:
                rows.append(value)
            elif isinstance(value, list) and value:
                first = {**value[0], "role": value[0].get("role") or f"blk.{layer['index']}.ffn_{key}"}
                rows.append({**first, "more_experts": len(value) - 1} if len(value) > 1 else first)
    return rows, len(layers) - len(shown)


@main.command(epilog=epilog("awm inspect ./my-model", "awm inspect model-Q4_K_M.gguf --all-tensors", "awm inspect org/name --json"))
@click.argument("path", metavar="PATH")
@json_option
@click.option("--all-tensors", is_flag=True, help="List every needed tensor of every layer (default: first and last layer).")
@friendly_errors
def inspect(path: str, as_json: bool, all_tensors: bool) -> None:
    """Show what a checkpoint is and how every tensor the method needs was found (shapes, stored types, metadata)."""
    with progress_reporter(as_json) as progress:
        with progress.stage(f"opening {path}"):
            model = open_model(path, progress)
        with model:
            data = _describe(path, model)
            if as_json:
                record_model(path, model, ffn=True)
    if as_json:
        emit_json(data)
        return
    console.print(_summary_table(path, data))
    console.print()
    rows, hidden = _tensor_rows(data, all_tensors)
    tt = table(title="Tensors the method reads")
    cells = [[str(cell(ref)) for _, _, cell in TENSOR_COLUMNS] for ref in rows]
    add_columns(tt, *(h for h, _, _ in TENSOR_COLUMNS), fold=("tensor (found by)",), cells=[[c.split("\n")[0] for c in r] for r in cells])
    for row in cells:
        tt.add_row(*map(escape, row))
    console.print(tt)
    if hidden:
        console.print(f"[dim]... {hidden} more layer(s) resolved the same way (--all-tensors lists them)[/]")
    console.print("[dim]Columns:[/]")
    for header, meaning, _ in TENSOR_COLUMNS:
        console.print(f"[dim]  {escape(header)}: {escape(meaning)}[/]", soft_wrap=False)
    for text in data["notes"]:
        note(text)
