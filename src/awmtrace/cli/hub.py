"""``awm fetch``: lean copies of Hub models (only the tensors the method reads)."""

from __future__ import annotations

from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    console,
    emit_json,
    err_console,
    escape,
    friendly_errors,
    json_option,
    progress_reporter,
    quiet_option,
    table,
)
from awmtrace.errors import AwmError


def human_bytes(n: float) -> str:
    """``1.23 GB`` style (powers of 1000, as the Hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


_SOURCE = {
    "fetched": "fetched",
    "awmtrace-cache": "cached",
    "hf-cache": "HF cache (full copy)",
    "dry-run": "dry run",
}


@main.command()
@click.argument("repo_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--ffn", is_flag=True, help="Also fetch the FFN input projections (for --weights up,gate).")
@click.option("--verify", is_flag=True, help="Re-hash cached copies against their recorded sha256 (refetch on mismatch).")
@click.option("--dry-run", is_flag=True, help="Read headers only; report what a fetch would transfer.")
@json_option
@quiet_option
@friendly_errors
def fetch(repo_ids: tuple[str, ...], ffn: bool, verify: bool, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Fetch what AWM needs from Hugging Face repos ID.

    ID is org/name, org/name@REVISION, a legacy single name (gpt2), a Hub
    address (https://huggingface.co/org/name[/tree/REVISION]) or
    hf://org/name; org/name:FILE.gguf or org/name:QUANT (Q4_K_M) picks one
    GGUF file of a repo.

    Only config.json, the tokenizer and, from safetensors shards, the byte
    ranges of the token embedding and attention Q/K are downloaded; pickle
    .bin checkpoints and GGUF files are fetched whole. Copies are cached (AWMTRACE_CACHE,
    default $HF_HOME/awmtrace), interrupted fetches resume, and HF_TOKEN,
    HF_ENDPOINT and HF_HUB_OFFLINE are honoured.
    """
    from awmtrace.io import hub
    from awmtrace.pipeline import hub_tensors

    results: list[Any] = []
    errors: list[tuple[str, str]] = []
    with progress_reporter(quiet or as_json) as progress:
        for spec in repo_ids:
            try:
                results.append(hub.fetch(spec, select=hub_tensors, ffn=ffn, progress=progress, verify=verify, dry_run=dry_run))
            except AwmError as exc:
                if len(repo_ids) == 1:
                    raise
                errors.append((spec, str(exc)))
    if as_json:
        emit_json({"results": [r.to_dict() for r in results], "errors": [{"id": i, "error": e} for i, e in errors]})
    else:
        t = table()
        for col in ("repo", "commit", "source", "fetched now", "needed", "checkpoint", "fraction", "path"):
            t.add_column(col, justify="right" if col in ("fetched now", "needed", "checkpoint", "fraction") else "left")
        for r in results:
            t.add_row(
                escape(r.repo_id + (f"@{r.revision}" if r.revision else "") + (f":{r.file}" if r.file else "")),
                r.commit[:12],
                _SOURCE.get(r.source, r.source),
                human_bytes(r.bytes_fetched),
                human_bytes(r.bytes_needed) if r.checkpoint_bytes else "-",
                human_bytes(r.checkpoint_bytes) if r.checkpoint_bytes else "-",
                f"{100 * r.fraction:.1f}%" if r.checkpoint_bytes else "-",
                escape(str(r.path) if r.path else "-"),
            )
        console.print(t)
        for r in results:
            for note in r.notes:
                console.print(f"[yellow]note:[/] {escape(r.repo_id)}: {escape(note)}")
        for _spec, message in errors:
            err_console.print(f"[bold red]error:[/] {escape(message)}")
    if errors:
        raise SystemExit(2)
