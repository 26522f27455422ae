"""``awm matrix`` (every pair of N models, families, lineage tree) and ``awm cache list|clean``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from awmtrace.cli import main
from awmtrace.cli.common import (
    DeviceType,
    check_output,
    console,
    emit_json,
    epilog,
    escape,
    fail_on_option,
    finish,
    flagged,
    friendly_errors,
    json_option,
    note,
    progress_reporter,
    quiet_option,
    table,
    write_output,
)
from awmtrace.collections.cache import DEFAULT_LIMIT_BYTES, ModelCache
from awmtrace.collections.engine import ENGINES
from awmtrace.core.stats import Z_INCONCLUSIVE, Z_RELATED
from awmtrace.errors import UsageError
from awmtrace.pipeline import ALIGN_CHOICES

_GIB = 1 << 30


def _read_list(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--from {path}: cannot read ({exc.strerror or exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _print_matrix(data: dict[str, Any]) -> None:
    from awmtrace.report.collection import short_name

    t = table(title="Models")
    for col in ("#", "model", "hidden", "layers", "Q/K", "note"):
        t.add_column(col)
    for m in data["models"]:
        note = m.get("error") or (f"same content as [{m['duplicate_of']}]" if m.get("duplicate_of") is not None else "")
        t.add_row(str(m["index"]), escape(str(m["input"])), str(m.get("hidden_size", "-")), str(m.get("n_layers", "-")),
                  escape("/".join(m.get("weight_dtypes", []))), escape(note))  # fmt: skip
    console.print(t)
    s = table(title="Scores (verdict: R related, ? inconclusive, . independent)")
    s.add_column("")
    n = len(data["models"])
    for j in range(n):
        s.add_column(str(j), justify="right")
    mark = {"related": "R", "inconclusive": "?", "independent": ".", "same": "="}
    for i in range(n):
        cells = []
        for j in range(n):
            v, lab = data["score"][i][j], data["verdict"][i][j]
            cells.append("-" if v is None else f"{v:.3f}{mark.get(lab or '', '')}")
        s.add_row(f"[{i}] {escape(short_name(data['models'][i]))}", *cells)
    console.print(s)
    console.print(f"[bold]Families[/] ({escape(data['family_rule'])}):")
    for fam in data["families"]:
        console.print("  " + ", ".join(f"[{i}] {escape(short_name(data['models'][i]))}" for i in fam))


def _print_tree(data: dict[str, Any]) -> None:
    from awmtrace.report.collection import tree_lines

    console.print(f"[bold]Lineage tree[/] ({escape(data['tree_rule'])}):")
    for line in tree_lines(data):
        console.print("  " + escape(line), soft_wrap=True)


_EXAMPLES = (
    "awm matrix ./base ./chat ./pruned ./other              # every pair, families, a table",
    "awm matrix --from models.txt --tree --json > map.json  # one model per line; lineage tree",
    "awm matrix a b c --plot heatmap.png --report map.html --csv pairs.csv",
    "awm matrix --from zoo.txt --workers 2                   # local processes",
    "awm matrix --from zoo.txt --engine ray --ray-address auto   # an existing Ray cluster",
)


@main.command("matrix", epilog=epilog(*_EXAMPLES))
@click.argument("models", nargs=-1)
@click.option("--from", "from_file", metavar="FILE", help="Read models from FILE, one per line (# comments allowed).")
@click.option("--store", "store", metavar="FILE", default="awm-results.sqlite", show_default=True,
              help="Results store: every pair lands here; a rerun skips stored pairs.")  # fmt: skip
@json_option
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per pair to FILE.")
@click.option("--plot", "plot_path", metavar="PNG", help="Write a clustered heatmap.")
@click.option("--report", "report_path", metavar="HTML", help="Write an offline HTML page for the collection.")
@click.option("--tree", "show_tree", is_flag=True, help="Print the lineage tree with each edge's evidence.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Per-model cache (default $AWMTRACE_CACHE/models or ~/.cache/awmtrace/models).",
)
@click.option(
    "--cache-limit",
    type=float,
    default=DEFAULT_LIMIT_BYTES / _GIB,
    show_default=True,
    help="Cache size limit in GiB (least recently used entries go first).",
)
@click.option(
    "--engine", type=click.Choice(ENGINES), default="local", show_default=True, help="local processes, or Ray tasks on a cluster."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Local worker processes (--engine local); default one per CPU, each with its share of threads.",
)
@click.option(
    "--ray-address", default=None, metavar="auto|HOST:PORT", help="Ray cluster to join (--engine ray; default: start a local one)."
)
@click.option(
    "--align",
    type=click.Choice(ALIGN_CHOICES),
    default="auto",
    show_default=True,
    help="How hidden dimensions are aligned (as in awm compare).",
)
@click.option("--null", "null", default=None, metavar="NAME|FILE", help="Null distribution for z and verdicts (default: paper).")
@click.option("--z-related", type=float, default=Z_RELATED, show_default=True)
@click.option("--z-inconclusive", type=float, default=Z_INCONCLUSIVE, show_default=True)
@click.option(
    "--device",
    type=DeviceType(),
    default="cpu",
    show_default=True,
    help="Where pairs' layers are scored from the cache: cpu (numpy, all cores), cuda, cuda:N, torch-cpu, or auto; "
    "the alignment runs on the CPU.",
)
@fail_on_option("any pair's verdict")
@quiet_option
@friendly_errors
def matrix_cmd(  # noqa: PLR0913 - click passes one argument per option
    models: tuple[str, ...], from_file: str | None, store: str, as_json: bool, csv_path: str | None, plot_path: str | None,
    report_path: str | None, show_tree: bool, cache_dir: str | None, cache_limit: float, engine: str, workers: int | None,
    ray_address: str | None, align: str, null: str | None, z_related: float, z_inconclusive: float, device: str,
    fail_on: str | None, quiet: bool,
) -> None:  # fmt: skip
    """Compare every pair of MODELS (paths, .gguf files or Hub ids): score matrix, families and lineage tree.

    Each model is read once into a per-model cache; pairs are scored from it.
    When a model or pair fails, the others are still scored and stored, and the exit code is 5 (incomplete).
    """
    from awmtrace.collections.matrix import matrix
    from awmtrace.report import collection as report

    specs = list(models) + (_read_list(from_file) if from_file else [])
    csv_out = check_output(Path(csv_path) if csv_path else None, "--csv", ("csv",))
    plot_out = check_output(Path(plot_path) if plot_path else None, "--plot", ("png",))
    report_out = check_output(Path(report_path) if report_path else None, "--report", ("html", "htm"))
    with progress_reporter(quiet or as_json) as progress:
        result = matrix(specs, cache_dir=cache_dir, cache_limit_bytes=int(cache_limit * _GIB), store=store, engine=engine, workers=workers,
                        ray_address=ray_address, align=align, null=null, z_related=z_related, z_inconclusive=z_inconclusive,
                        device=device, progress=progress)  # fmt: skip
    data = result.to_dict()
    if csv_out is not None:
        write_output("CSV", csv_out, lambda: report.write_csv(data, csv_out))
    if plot_out is not None:
        write_output("heatmap", plot_out, lambda: report.write_heatmap(data, plot_out))
    if report_out is not None:
        write_output("report", report_out, lambda: report.write_html(data, report_out))
    if as_json:
        emit_json(data)
    else:
        _print_matrix(data)
        if show_tree:
            _print_tree(data)
        for text in data["notes"]:
            note(text)
    labels = [v for i, row in enumerate(data["verdict"]) for j, v in enumerate(row) if i != j and isinstance(v, str)]
    finish(flagged=flagged(labels, fail_on), incomplete=bool(result.failed))


@main.group("cache")
def cache_group() -> None:
    """The per-model cache of `awm matrix`."""


_dir_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Cache folder (default as awm matrix).")


@cache_group.command("list")
@_dir_option
@click.option(
    "--verify",
    is_flag=True,
    help="Checksum every file of every entry (by default large files are checked when their size or time changed).",
)
@json_option
@friendly_errors
def cache_list(cache_dir: str | None, verify: bool, as_json: bool) -> None:
    """Entries, most recently used first."""
    cache = ModelCache(cache_dir)
    items = cache.entries(verify=verify)
    if as_json:
        emit_json({"schema_version": 1, "cache_dir": str(cache.root), "entries": items, "bytes": sum(d["bytes"] for d in items)})
        return
    t = table(title=f"{cache.root}: {len(items)} entries, {sum(d['bytes'] for d in items) / _GIB:.2f} GiB")
    for col in ("key", "model", "GiB", "valid"):
        t.add_column(col)
    for d in items:
        t.add_row(
            d["key"][:12], escape(str(d.get("spec") or d.get("problem", ""))), f"{d['bytes'] / _GIB:.3f}", "yes" if d["valid"] else "NO"
        )
    console.print(t)


@cache_group.command("clean")
@_dir_option
@click.option("--invalid-only", is_flag=True, help="Remove only entries that fail their checks (and leftovers of killed builds).")
@friendly_errors
def cache_clean(cache_dir: str | None, invalid_only: bool) -> None:
    """Remove cache entries (all of them unless --invalid-only)."""
    cache = ModelCache(cache_dir)
    removed = cache.clean(everything=not invalid_only)
    console.print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {escape(str(cache.root))}")
