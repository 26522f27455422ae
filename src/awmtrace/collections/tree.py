"""A lineage tree per family: a maximum spanning arborescence over pair scores, each edge directed only by evidence.

Direction rules (each names itself on the edge it decides):

* quantisation: a copy stored quantised (GGUF Q*/IQ* types, int8) is the child
  of one stored as floats; a quantised model is never a float model's parent;
* width: the narrower model is the child (pruning removes hidden dimensions);
* depth: when every layer of the deeper model has a strong match (UCKA >= 0.5)
  in the shallower one, several of them matching one shallower layer, the
  deeper model is an up-scaled child (layers duplicated); otherwise the
  shallower one is a depth-pruned child (some layers have no counterpart);
* vocabulary: when one vocabulary strictly contains the other, the rows it
  adds are examined: freshly initialised rows (far smaller or larger norms
  than the shared rows, or all near the mean row) make the larger model an
  extended child; rows like the shared ones make the smaller model a pruned
  child (a pruning keeps rows as copies);
* model card: a ``base_model`` in one model's card naming the other;
* upload dates (weakest): for Hub models, the one whose snapshot's commit was
  made earlier is the parent, when the two dates are more than a day apart
  (same-day re-uploads say nothing about order). Dates direct an edge only
  when no rule above speaks; when one does, they are named on the edge as
  agreeing or as overruled, and never settle a conflict between the others.

Evidence that disagrees leaves the edge undirected and says so, as does the
absence of any. Undirected edges enter the arborescence both ways; its
orientation of them is then not a claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import networkx as nx  # type: ignore[import-untyped]
import numpy as np

__all__ = ["Direction", "direction", "lineage_tree", "vocab_direction", "TREE_RULE"]

TREE_RULE = (
    "maximum spanning arborescence (networkx) over pair scores within each family; an edge is directed only when "
    "evidence says which model came first (quantisation, width, depth matching, vocabulary, model card; else Hub upload dates "
    "more than a day apart, the earlier the parent), otherwise it is marked undirected and its orientation is not a claim"
)
#: UCKA above which a layer of one model counts as matching a layer of the other.
LAYER_MATCH = 0.5
#: Added embedding rows count as freshly initialised when their median norm is off by this factor,
#: or their cosine to the mean row exceeds FRESH_COS.
FRESH_NORM_RATIO = 2.0
FRESH_COS = 0.9
#: Upload dates closer than this give no order (a model and its re-upload or sibling on the same day).
DATE_MIN_GAP = timedelta(days=1)
NO_EVIDENCE = (
    "no evidence of direction (same storage type, width, depth and vocabulary; no model card; no upload dates more than a day apart)"
)


@dataclass
class Direction:
    """What the evidence says about a pair: ``parent``/``child`` model indices (``None`` when undirected) and why."""

    parent: int | None
    child: int | None
    evidence: list[str] = field(default_factory=list)


Vote = tuple[int, int, str]  # (parent, child, why)


def _quant_vote(i: int, j: int, info: Sequence[dict[str, Any]]) -> Vote | None:
    qi, qj = info[i]["quantised"], info[j]["quantised"]
    if qi == qj:
        return None
    p, c = (j, i) if qi else (i, j)
    return (
        p,
        c,
        (
            f"quantised copy: model {c} stores Q/K as {'/'.join(info[c]['weight_dtypes'])}, model {p} as "
            f"{'/'.join(info[p]['weight_dtypes'])} (quantisation goes float -> quantised)"
        ),
    )


def _width_vote(i: int, j: int, info: Sequence[dict[str, Any]]) -> Vote | None:
    hi, hj = info[i]["hidden_size"], info[j]["hidden_size"]
    if hi == hj:
        return None
    p, c = (i, j) if hi > hj else (j, i)
    return p, c, f"width: model {c} has hidden size {info[c]['hidden_size']} < {info[p]['hidden_size']} of model {p} (pruning narrows)"


def _depth_vote(i: int, j: int, info: Sequence[dict[str, Any]], result: dict[str, Any]) -> Vote | None:
    li, lj = info[i]["n_layers"], info[j]["n_layers"]
    matrix = result.get("layer_matching", {}).get("score_matrix")
    if li == lj or matrix is None:
        return None
    full = np.asarray(matrix, dtype=np.float64)  # (L_i, L_j): result a = i, b = j
    shallow, deep = (i, j) if li < lj else (j, i)
    s = full if li < lj else full.T  # (shallow, deep)
    best = s.argmax(axis=0)
    covered = s.max(axis=0) >= LAYER_MATCH
    counts = np.bincount(best[covered], minlength=s.shape[0])
    if covered.all() and (counts >= 2).any():
        dup = [int(k) for k in np.flatnonzero(counts >= 2)]
        return (
            shallow,
            deep,
            (
                f"depth up-scaling: model {deep} ({s.shape[1]} layers) is deeper and every one of its layers matches a layer of model "
                f"{shallow}, layer(s) {dup} of model {shallow} matched by several"
            ),
        )
    missing = [int(k) for k in np.flatnonzero(~covered)]
    return (
        deep,
        shallow,
        (
            f"depth pruning: model {shallow} ({s.shape[0]} layers) is shallower and layer(s) {missing} of model {deep} have no "
            f"counterpart (UCKA < {LAYER_MATCH}) in it"
        ),
    )


def _card_vote(i: int, j: int, info: Sequence[dict[str, Any]]) -> Vote | None:
    """A model whose card's ``base_model`` names the other (its input or Hub repo; Hub ids ignore case) is its child."""
    for c, p in ((i, j), (j, i)):
        names = {str(n).lower() for n in (info[p].get("input"), info[p].get("hub_id")) if n}
        for declared in info[c].get("card_base_model") or []:
            if declared.lower() in names:
                return p, c, f"model card: model {c} declares base_model {declared!r}, which is model {p}"
    return None


def _uploaded(m: dict[str, Any]) -> datetime | None:
    value = m.get("uploaded")
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _date_vote(i: int, j: int, info: Sequence[dict[str, Any]]) -> Vote | None:
    """The earlier upload is the parent, when both models have Hub upload dates more than :data:`DATE_MIN_GAP` apart.

    The text has no prefix: :func:`direction` says whether the dates decided, agreed or were overruled.
    """
    ti, tj = _uploaded(info[i]), _uploaded(info[j])
    if ti is None or tj is None or abs(ti - tj) <= DATE_MIN_GAP:
        return None
    p, c = (i, j) if ti < tj else (j, i)
    day = {p: min(ti, tj).date().isoformat(), c: max(ti, tj).date().isoformat()}
    return p, c, f"model {p} ({info[p]['input']}) {day[p]} before model {c} ({info[c]['input']}) {day[c]}"


def vocab_direction(i: int, j: int, keys_i: set[Any], keys_j: set[Any], embed_i: Callable[[], tuple[np.ndarray, dict[Any, int]]],
                    embed_j: Callable[[], tuple[np.ndarray, dict[Any, int]]]) -> Vote | None:  # fmt: skip
    """Direction from nested vocabularies; ``embed_*()`` return the model's embedding ``(V, n)`` float32 and key -> row id."""
    if keys_i == keys_j or not (keys_i < keys_j or keys_j < keys_i):
        return None
    big, small, keys_big, keys_small, embed = (j, i, keys_j, keys_i, embed_j) if keys_i < keys_j else (i, j, keys_i, keys_j, embed_i)
    emb, ids = embed()
    added = np.array(sorted(ids[k] for k in keys_big - keys_small if ids[k] < emb.shape[0]), dtype=np.int64)
    shared = np.array(sorted(ids[k] for k in keys_small if ids[k] < emb.shape[0]), dtype=np.int64)
    if added.size == 0 or shared.size == 0:
        return None
    rows_a, rows_s = emb[added].astype(np.float64), emb[shared].astype(np.float64)
    norm_ratio = float(np.median(np.linalg.norm(rows_a, axis=1)) / max(np.median(np.linalg.norm(rows_s, axis=1)), 1e-30))
    mean = rows_s.mean(axis=0)
    cos = rows_a @ mean / np.maximum(np.linalg.norm(rows_a, axis=1) * np.linalg.norm(mean), 1e-30)
    mean_cos = float(np.mean(cos))
    n_add = int(added.size)
    if norm_ratio > FRESH_NORM_RATIO or norm_ratio < 1 / FRESH_NORM_RATIO or mean_cos > FRESH_COS:
        return (
            small,
            big,
            (
                f"vocabulary extension: model {big} adds {n_add} tokens to model {small}'s vocabulary and their rows look freshly "
                f"initialised (median norm {norm_ratio:.2f}x the shared rows', mean cosine to the mean row {mean_cos:.2f})"
            ),
        )
    return (
        big,
        small,
        (
            f"vocabulary pruning: model {small}'s vocabulary is model {big}'s minus {n_add} tokens whose rows in model {big} look "
            f"trained, not fresh (median norm {norm_ratio:.2f}x, mean cosine to the mean row {mean_cos:.2f})"
        ),
    )


def direction(i: int, j: int, info: Sequence[dict[str, Any]], result: dict[str, Any], vocab_vote: Vote | None = None) -> Direction:
    """Combine every rule's vote for pair ``(i, j)`` (``result``: the pair's result dict with a = ``i``, b = ``j``)."""
    votes = [v for v in (_quant_vote(i, j, info), _width_vote(i, j, info), _depth_vote(i, j, info, result), vocab_vote,
                         _card_vote(i, j, info)) if v is not None]  # fmt: skip
    dated = _date_vote(i, j, info)  # the weakest rule: it decides only when no other speaks
    if not votes:
        if dated is not None:
            return Direction(dated[0], dated[1], [f"upload dates: {dated[2]}"])
        return Direction(None, None, [NO_EVIDENCE])
    ways = {(p, c) for p, c, _ in votes}
    texts = [why for _, _, why in votes]
    if len(ways) > 1:
        weak = [f"upload dates (weaker, not used to settle it): {dated[2]}"] if dated is not None else []
        return Direction(None, None, ["conflicting evidence, left undirected: " + "; ".join(texts), *weak])
    p, c = ways.pop()
    if dated is not None:
        agrees = (dated[0], dated[1]) == (p, c)
        texts.append(f"upload dates: {dated[2]}" if agrees else f"upload dates disagree (weaker evidence, overruled): {dated[2]}")
    return Direction(p, c, texts)


def lineage_tree(
    family: Sequence[int], scores: dict[tuple[int, int], float], dirs: dict[tuple[int, int], Direction]
) -> list[dict[str, Any]]:
    """Edges ``{parent, child, score, directed, evidence}`` of the maximum spanning arborescence of one family.

    ``scores``/``dirs`` are keyed by ``(i, j)`` with ``i < j``. A directed
    pair adds one arc (parent -> child); an undirected pair adds both.
    Quantised-to-float arcs are never added (see :func:`direction`).
    """
    if len(family) < 2:
        return []
    g = nx.DiGraph()
    g.add_nodes_from(family)
    members = set(family)
    for (i, j), s in scores.items():
        if i not in members or j not in members or not np.isfinite(s):
            continue
        d = dirs[(i, j)]
        arcs = [(d.parent, d.child)] if d.parent is not None else [(i, j), (j, i)]
        for p, c in arcs:
            g.add_edge(p, c, weight=float(s))
    try:
        arb = nx.maximum_spanning_arborescence(g, attr="weight", preserve_attrs=True)
        arcs_out = list(arb.edges())
        fallback = None
    except nx.NetworkXException:
        und = nx.maximum_spanning_tree(g.to_undirected(), weight="weight")
        arcs_out = [(min(a, b), max(a, b)) for a, b in und.edges()]
        fallback = "no arborescence respects the evidence (e.g. two roots); undirected maximum spanning tree shown"
    edges = []
    for p, c in sorted(arcs_out):
        key = (min(p, c), max(p, c))
        d = dirs[key]
        directed = fallback is None and d.parent == p and d.child == c
        evidence = list(d.evidence) + ([fallback] if fallback else [])
        edges.append({"parent": int(p), "child": int(c), "score": float(scores[key]), "directed": bool(directed), "evidence": evidence})
    return edges
