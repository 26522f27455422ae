"""``awm fetch``: lean copies of Hub models (only the tensors the method reads)."""

from __future__ import annotations

from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    add_columns,
    console,
    emit_json,
    epilog,
    err_console,
    escape,
    finish,
    friendly_errors,
    json_option,
    note,
    progress_reporter,
    quiet_option,
    record_input,
    table,
)
from awmtrace.errors import AwmError
from awmtrace.report.text import fmt_bytes

_SOURCE = {
    "fetched": "fetched",
    "awmtrace-cache": "cached",
    "hf-cache": "HF cache (full copy)",
    "dry-run": "dry run",
}


@main.command(
    epilog=epilog(
        "awm fetch meta-llama/Llama-2-7b-hf",
        "awm fetch org/name@v1.0 --dry-run",
        "HF_HUB_OFFLINE=1 awm fetch org/name --verify",
    )
)
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
    HF_ENDPOINT and HF_HUB_OFFLINE are honoured. With several ids, the
    ones that fail are reported and the exit code is 5 (incomplete).
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
    for r in results:
        commit = r.commit if len(r.commit or "") == 40 else None
        record_input(r.repo_id, "hub", repo=r.repo_id, commit=commit, path=str(r.path) if r.path else None)
    if as_json:
        emit_json({"results": [r.to_dict() for r in results], "errors": [{"id": i, "error": e} for i, e in errors]})
    else:
        t = table()
        sizes = ("fetched now", "needed", "of checkpoint")
        rows = [
            [
                escape(r.repo_id + (f"@{r.revision}" if r.revision else "") + (f":{r.file}" if r.file else ""))
                + "\n"
                + escape(str(r.path) if r.path else "(not kept)"),
                r.commit[:12],
                _SOURCE.get(r.source, r.source),
                fmt_bytes(r.bytes_fetched),
                fmt_bytes(r.bytes_needed) if r.checkpoint_bytes else "-",
                f"{100 * r.fraction:.1f}% of {fmt_bytes(r.checkpoint_bytes)}" if r.checkpoint_bytes else "-",
            ]
            for r in results
        ]
        add_columns(t, "repo (local copy)", "commit", "source", *sizes, right=sizes, fold=("repo (local copy)",))
        for row in rows:
            t.add_row(*row)
        console.print(t)
        for r in results:
            for text in r.notes:
                note(f"{r.repo_id}: {text}", style="yellow")
        for _spec, message in errors:
            err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    finish(incomplete=bool(errors))
