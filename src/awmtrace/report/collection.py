"""Figures and pages for a collection (``awm matrix``): a clustered heatmap, an offline HTML page, CSV and a text tree."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cluster_order", "heatmap_png", "write_heatmap", "write_html", "write_csv", "tree_lines", "short_name"]


def short_name(model: dict[str, Any]) -> str:
    """The last path component of a model's input (a Hub id stays whole)."""
    text = str(model["input"]).rstrip("/")
    return text if "/" in text and not Path(text).exists() else Path(text).name or text


def _scores(data: dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in data["score"]], dtype=float)


def cluster_order(data: dict[str, Any]) -> list[int]:
    """Model indices ordered by average-linkage clustering on ``1 - score`` (families end up adjacent)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    s = _scores(data)
    n = s.shape[0]
    if n < 3:
        return list(range(n))
    d = 1.0 - np.nan_to_num(s, nan=0.0)
    d = np.clip((d + d.T) / 2.0, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return [int(i) for i in leaves_list(linkage(squareform(d, checks=False), method="average"))]


def heatmap_png(data: dict[str, Any]) -> bytes:
    """A clustered heatmap of the score matrix as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = cluster_order(data)
    s = _scores(data)[np.ix_(order, order)]
    names = [short_name(data["models"][i]) for i in order]
    size = max(4.0, 0.45 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(np.ma.masked_invalid(s), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 20:
        for x in range(len(names)):
            for y in range(len(names)):
                if np.isfinite(s[y, x]):
                    ax.text(x, y, f"{s[y, x]:.2f}", ha="center", va="center", fontsize=6, color="w" if s[y, x] < 0.6 else "k")
    fig.colorbar(im, ax=ax, label="AWM score (mean Q/K UCKA)")
    ax.set_title("AWM scores, clustered (average linkage on 1 - score)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_heatmap(data: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.write_bytes(heatmap_png(data))
    return out


def write_csv(data: dict[str, Any], path: str | Path) -> Path:
    """One row per pair: indices, inputs, score, z, verdict (or the error)."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "model_a", "model_b", "score", "z", "p_value", "verdict", "error"])
        for p in data["pairs"]:
            w.writerow([p["a"], p["b"], data["models"][p["a"]]["input"], data["models"][p["b"]]["input"], p.get("score"), p.get("z"),
                        p.get("p_value"), p.get("verdict"), p.get("error", "")])  # fmt: skip
    return out


def tree_lines(data: dict[str, Any]) -> list[str]:
    """The lineage trees as indented text lines, one block per family."""
    lines: list[str] = []
    children: dict[int, list[dict[str, Any]]] = {}
    has_parent = set()
    for e in data["tree"]:
        children.setdefault(e["parent"], []).append(e)
        has_parent.add(e["child"])

    def walk(node: int, depth: int) -> None:
        for e in sorted(children.get(node, []), key=lambda e: -e["score"]):
            arrow = "->" if e["directed"] else "--"
            lines.append(f"{'  ' * depth}{arrow} [{e['child']}] {short_name(data['models'][e['child']])}  score {e['score']:.4f}")
            for ev in e["evidence"]:
                lines.append(f"{'  ' * (depth + 2)}{'' if e['directed'] else '(undirected) '}{ev}")
            walk(e["child"], depth + 1)

    for fam in data["families"]:
        roots = [i for i in fam if i not in has_parent]
        for r in roots:
            lines.append(f"[{r}] {short_name(data['models'][r])}" + ("" if len(fam) > 1 else "  (no relative)"))
            walk(r, 1)
    return lines


def write_html(data: dict[str, Any], path: str | Path) -> Path:
    """A self-contained page: the heatmap (inline PNG), models, families, tree with evidence, and every pair."""
    esc = html.escape
    png = base64.b64encode(heatmap_png(data)).decode()
    models = "".join(
        f"<tr><td>{m['index']}</td><td>{esc(str(m['input']))}</td><td>{esc(str(m.get('hidden_size', '')))}</td>"
        f"<td>{esc(str(m.get('n_layers', '')))}</td><td>{esc('/'.join(m.get('weight_dtypes', [])))}</td>"
        f"<td>{esc(m.get('error') or ('duplicate of ' + str(m['duplicate_of']) if m.get('duplicate_of') is not None else ''))}</td></tr>"
        for m in data["models"]
    )
    fams = "".join(f"<li>{', '.join(esc(short_name(data['models'][i])) for i in f)}</li>" for f in data["families"])
    edges = "".join(
        f"<tr><td>{esc(short_name(data['models'][e['parent']]))}</td><td>{'&rarr;' if e['directed'] else '&ndash;'}</td>"
        f"<td>{esc(short_name(data['models'][e['child']]))}</td><td>{e['score']:.4f}</td>"
        f"<td>{'<br>'.join(esc(x) for x in e['evidence'])}</td></tr>"
        for e in data["tree"]
    )
    pairs = "".join(
        f"<tr><td>{esc(short_name(data['models'][p['a']]))}</td><td>{esc(short_name(data['models'][p['b']]))}</td>"
        + (
            f"<td colspan=3>{esc(p['error'])}</td>"
            if "error" in p
            else f"<td>{p['score']:.4f}</td><td>{p['z']:.1f}</td><td>{esc(p['verdict'])}</td>"
        )
        + "</tr>"
        for p in data["pairs"]
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.get("notes", []))
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>awm matrix: {len(data['models'])} models</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}}</style></head><body>
<h1>Model collection: {len(data['models'])} models</h1>
<p>awmtrace {esc(data['tool']['version'])}, schema {data['schema_version']}.</p>
<img alt="clustered heatmap of AWM scores" src="data:image/png;base64,{png}">
<h2>Families</h2><p>{esc(data['family_rule'])}</p><ul>{fams}</ul>
<h2>Lineage tree</h2><p>{esc(data['tree_rule'])}</p>
<table><tr><th>parent</th><th></th><th>child</th><th>score</th><th>evidence</th></tr>{edges}</table>
<h2>Models</h2><table><tr><th>#</th><th>input</th><th>hidden</th><th>layers</th><th>Q/K dtype</th><th>note</th></tr>{models}</table>
<h2>Pairs</h2><table><tr><th>A</th><th>B</th><th>score</th><th>z</th><th>verdict</th></tr>{pairs}</table>
<h2>Notes</h2><ul>{notes}</ul></body></html>"""  # fmt: skip
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out
