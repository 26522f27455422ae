"""``awmtrace.matrix(models)``: every pair of N models, families and a lineage tree, as data.

Each model is read once into the per-model cache (:mod:`.cache`); each pair
is scored from cached data (:mod:`.pairs`) by an engine (:mod:`.engine`).
Pair results land in the results store under a key over both content
fingerprints, the options and the version, so a killed run resumes where it
stopped and a model added later costs only its new pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awmtrace._version import __version__
from awmtrace.collections import engine as engine_mod
from awmtrace.collections.cache import DEFAULT_LIMIT_BYTES, CacheEntry, ModelCache
from awmtrace.collections.families import families, family_rule
from awmtrace.collections.tree import TREE_RULE, Direction, direction, lineage_tree, vocab_direction
from awmtrace.core import stats
from awmtrace.errors import UsageError
from awmtrace.store import ResultsStore, StoredRecord, record_key

__all__ = ["matrix", "MatrixResult", "SUITE", "MATRIX_SCHEMA_VERSION"]

#: ``suite`` column of the store rows a matrix run writes.
SUITE = "awm-matrix"
MATRIX_SCHEMA_VERSION = 1

Progress = Callable[[str, int, int], None]


@dataclass
class MatrixResult:
    """Scores of every pair (``N x N``, ``None`` where not computed), families and lineage trees.

    ``models[i]``: ``input`` (as given), ``fingerprint``, ``key`` (cache
    entry), ``error`` (when it failed to open), ``duplicate_of`` (index of
    the first input with the same content), its shape, and what belongs to
    the input rather than to its content: ``hub_id`` (the repo of its Hub
    snapshot), ``uploaded`` (that commit's date, UTC ISO 8601) and
    ``card_base_model`` (its model card's ``base_model``); ``None``/empty for a local model without them.
    """

    models: list[dict[str, Any]]
    score: list[list[float | None]]
    z: list[list[float | None]]
    verdict: list[list[str | None]]
    pairs: list[dict[str, Any]]
    families: list[list[int]]
    family_rule: str
    tree: list[dict[str, Any]]
    tree_rule: str = TREE_RULE
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    results: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def failed(self) -> bool:
        return any(m.get("error") for m in self.models) or any(p.get("error") for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": MATRIX_SCHEMA_VERSION,
            "tool": {"name": "awmtrace", "version": __version__},
            "models": self.models,
            "score": self.score,
            "z": self.z,
            "verdict": self.verdict,
            "pairs": self.pairs,
            "families": self.families,
            "family_rule": self.family_rule,
            "tree": self.tree,
            "tree_rule": self.tree_rule,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }


def _orient(result: dict[str, Any], swap: bool) -> dict[str, Any]:
    """A stored result seen from the other side (``a`` <-> ``b``) when ``swap``."""
    if not swap:
        return result
    r = dict(result)
    r["a"], r["b"] = result["b"], result["a"]
    lm = dict(result.get("layer_matching", {}))
    lm["n_layers_a"], lm["n_layers_b"] = lm.get("n_layers_b"), lm.get("n_layers_a")
    if lm.get("score_matrix") is not None:
        lm["score_matrix"] = [list(col) for col in zip(*lm["score_matrix"], strict=True)]
    lm["pairs"] = sorted([[b, a] for a, b in lm.get("pairs", [])])
    r["layer_matching"] = lm
    r["layers"] = sorted(
        ({**row, "index_a": row["index_b"], "index_b": row["index_a"]} for row in result.get("layers", [])), key=lambda x: x["index_a"]
    )
    return r


def _model_info(i: int, spec: str, entry: CacheEntry, ex: dict[str, Any]) -> dict[str, Any]:
    m, v = entry.manifest, entry.manifest["view"]
    return {
        "index": i,
        "input": spec,
        "fingerprint": entry.fingerprint,
        "key": entry.key,
        "format": v["format"],
        "architecture": v["architecture"],
        "hidden_size": v["hidden_size"],
        "n_layers": v["n_layers"],
        "vocab_size": v["vocab_size"],
        "weight_dtypes": m["weight_dtypes"],
        "quantised": m["quantised"],
        "hub_id": ex.get("hub_id"),
        "card_base_model": ex.get("card_base_model") or [],
        "uploaded": ex.get("uploaded"),
        "error": None,
        "duplicate_of": None,
    }


def _extract(specs: Sequence[str], cache: ModelCache, eng: engine_mod.Engine, progress: Progress) -> list[dict[str, Any]]:
    from awmtrace.collections.extract import input_facts

    out: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    for s in dict.fromkeys(specs):
        # A local model whose entry the identity index already points to needs no worker (nor its start-up).
        entry = cache.lookup(s) if Path(s).exists() else None
        if entry is None:
            todo.append(s)
        else:
            out[s] = {"key": entry.key, "fingerprint": entry.fingerprint, "built": 0, "notes": [], **input_facts(s)}
    # Local paths made absolute for workers that run elsewhere; Hub ids pass as they are.
    where = [str(Path(s).absolute()) if Path(s).exists() else s for s in todo]
    jobs: list[engine_mod.Job] = [(engine_mod.extract_task, (w, str(cache.root), cache.limit_bytes)) for w in where]
    for k, res in eng.run(jobs):
        out[todo[k]] = res
        cache.notes.extend(res.get("notes", []))
        progress("reading models", len(out), len(set(specs)))
    return [out[s] for s in specs]


def _store_options(align: str, null: str | None, min_shared: int | None, zr: float, zi: float, cache: ModelCache) -> dict[str, Any]:
    return {"method": SUITE, "align": align, "null": null, "min_shared_tokens": min_shared, "z_related": zr, "z_inconclusive": zi,
            "cache": cache.options}  # fmt: skip


class _Results:
    """Pair results by fingerprint pair: the results store when given, else a dict."""

    def __init__(self, store: ResultsStore | None, options: dict[str, Any]) -> None:
        self.store, self.options = store, options
        self.memory: dict[str, dict[str, Any]] = {}

    def key(self, fa: str, fb: str) -> str:
        return record_key(SUITE, fa, fb, fa, fb, self.options, __version__)

    def get(self, fa: str, fb: str) -> dict[str, Any] | None:
        key = self.key(fa, fb)
        if self.store is None:
            return self.memory.get(key)
        rec = self.store.get(key)
        return rec.result if rec is not None else None

    def put(self, fa: str, fb: str, spec_a: str, spec_b: str, result: dict[str, Any]) -> None:
        if self.store is None:
            self.memory[self.key(fa, fb)] = result
            return
        rec = StoredRecord.create(name_a=fa, name_b=fb, result=result, suite=SUITE, spec_a=spec_a, spec_b=spec_b,
                                  fingerprint_a=fa, fingerprint_b=fb, options=self.options)  # fmt: skip
        self.store.put(rec)


def _score_pairs(
    todo: list[tuple[int, int]], info: list[dict[str, Any]], res: _Results, cache: ModelCache, eng: engine_mod.Engine,
    pair_options: dict[str, Any], progress: Progress,
) -> dict[tuple[int, int], dict[str, Any]]:  # fmt: skip
    """Compute missing pairs (``(i, j)`` oriented by fingerprint order), store each as it arrives."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    total = len(todo)
    jobs: list[engine_mod.Job] = [
        (engine_mod.pair_task, (info[i]["key"], info[j]["key"], info[i]["input"], info[j]["input"], str(cache.root), pair_options))
        for i, j in todo
    ]
    done = 0
    for k, result in eng.run(jobs):
        i, j = todo[k]
        if result.get("stale"):
            # An entry broke between extraction and scoring: rebuild both here and retry once.
            cache.notes.extend(result.get("notes", []))
            for m in (i, j):
                cache.notes.extend(engine_mod.extract_task(info[m]["input"], str(cache.root), cache.limit_bytes).get("notes", []))
            result = engine_mod.pair_task(*jobs[k][1])
        if "error" not in result:
            res.put(info[i]["fingerprint"], info[j]["fingerprint"], info[i]["input"], info[j]["input"], result)
        out[(i, j)] = result
        done += 1
        progress("scoring pairs", done, total)
    return out


def matrix(  # noqa: PLR0913 - keyword options, until one frozen options object replaces them
    models: Iterable[str | Path],
    *,
    cache_dir: str | Path | None = None,
    cache_limit_bytes: int = DEFAULT_LIMIT_BYTES,
    store: str | Path | ResultsStore | None = None,
    engine: str | engine_mod.Engine = "local",
    workers: int | None = 1,
    ray_address: str | None = None,
    align: str = "auto",
    null: str | None = None,
    min_shared_tokens: int | None = None,
    z_related: float = stats.Z_RELATED,
    z_inconclusive: float = stats.Z_INCONCLUSIVE,
    device: str = "cpu",
    progress: Progress | None = None,
) -> MatrixResult:
    """Compare every pair of ``models`` (paths, ``.gguf`` files or Hub ids); see :class:`MatrixResult`.

    ``store``: a results store (path or open store) that receives every pair
    and lets a later run skip stored pairs; ``engine``: ``"local"`` (with
    ``workers`` processes, ``None`` for one per CPU as the CLI does; the default, 1, runs everything in this process, which
    needs no ``if __name__ == "__main__"`` guard in a calling script) or ``"ray"`` (``ray_address``: ``"auto"``,
    ``"HOST:PORT"``, or ``None`` for a local Ray). ``device``: where pairs' layers are scored (as ``awm compare --device``
    takes it; each worker uses it); the alignment and extraction run on the CPU.
    """
    started = time.perf_counter()
    specs = [str(m) for m in models]
    if len(specs) < 2:
        raise UsageError(f"awm matrix needs at least two models, got {len(specs)}")
    progress = progress or (lambda stage, done, total: None)
    if device != "cpu":
        from awmtrace.core.backend import select_backend

        select_backend(device)  # a device that is not there fails here, in one line, before any model is read
    cache = ModelCache(cache_dir, cache_limit_bytes)
    eng = engine if isinstance(engine, engine_mod.Engine) else engine_mod.make_engine(engine, workers, ray_address)
    own_store = store is not None and not isinstance(store, ResultsStore)
    st = store if isinstance(store, ResultsStore) else ResultsStore(store) if store is not None else None
    try:
        return _run(specs, cache, eng, st, align, null, min_shared_tokens, z_related, z_inconclusive, device, progress, started)
    finally:
        if own_store and st is not None:
            st.close()
        if not isinstance(engine, engine_mod.Engine):
            eng.close()


def _run(  # noqa: PLR0913 - the run's parts, passed once from matrix()
    specs: list[str], cache: ModelCache, eng: engine_mod.Engine, st: ResultsStore | None, align: str, null: str | None,
    min_shared: int | None, zr: float, zi: float, device: str, progress: Progress, started: float,
) -> MatrixResult:  # fmt: skip
    from awmtrace.nulls import load_null

    null_name = load_null(null).name
    extracted = _extract(specs, cache, eng, progress)
    info: list[dict[str, Any]] = []
    entries: dict[int, CacheEntry] = {}
    first_of: dict[str, int] = {}
    notes: list[str] = []
    for i, (spec, ex) in enumerate(zip(specs, extracted, strict=True)):
        entry = cache.open(ex["key"]) if "error" not in ex else None
        if entry is None:
            why = ex.get("error", "its cache entry could not be read back")
            info.append({"index": i, "input": spec, "fingerprint": None, "key": None, "error": why, "duplicate_of": None})
            notes.append(f"model {i} ({spec}) failed: {why}; its pairs are marked")
            continue
        info.append(_model_info(i, spec, entry, ex))
        if entry.fingerprint in first_of:
            info[i]["duplicate_of"] = first_of[entry.fingerprint]
            notes.append(f"model {i} ({spec}) has the same content as model {first_of[entry.fingerprint]}: scored once")
        else:
            first_of[entry.fingerprint] = i
            entries[i] = entry
    originals = sorted(entries)
    res = _Results(st, _store_options(align, null_name, min_shared, zr, zi, cache))
    pair_options = {"align": align, "null": null, "min_shared_tokens": min_shared, "z_related": zr, "z_inconclusive": zi,
                    "threads": eng.pair_threads, "device": device}  # fmt: skip
    results: dict[tuple[int, int], dict[str, Any]] = {}
    todo: list[tuple[int, int]] = []
    for x, i in enumerate(originals):
        for j in originals[x + 1 :]:
            # Computed as `awm compare i j` would (input order); a row stored the other way round by an
            # earlier run with another order is used as it is (one stored row per unordered pair).
            fi, fj = info[i]["fingerprint"], info[j]["fingerprint"]
            got = res.get(fi, fj)
            if got is not None:
                results[(i, j)] = got
            elif (back := res.get(fj, fi)) is not None:
                results[(j, i)] = back
            else:
                todo.append((i, j))
    n_stored = len(results)
    results.update(_score_pairs(todo, info, res, cache, eng, pair_options, progress))
    if n_stored:
        notes.append(f"{n_stored} pair(s) read from the results store, {len(todo)} computed")
    out = _assemble(specs, info, results, entries, null_name, zr)
    out.notes = notes + list(dict.fromkeys(cache.notes)) + out.notes
    cache.evict(protect={e.key for e in entries.values()})
    for e in entries.values():
        e.close()
    out.elapsed_s = time.perf_counter() - started
    return out


def _fill(n: int, info: list[dict[str, Any]], results: dict[tuple[int, int], dict[str, Any]]) -> tuple[Any, Any, Any, list[dict[str, Any]]]:
    """Score, z and verdict matrices (duplicates copy their original's row) and the list of pairs."""
    score: list[list[float | None]] = [[None] * n for _ in range(n)]
    z: list[list[float | None]] = [[None] * n for _ in range(n)]
    verdict: list[list[str | None]] = [[None] * n for _ in range(n)]
    pairs = []
    for (a, b), r in sorted(results.items()):
        entry: dict[str, Any] = {"a": a, "b": b}
        if "error" in r:
            entry["error"] = r["error"]
        else:
            entry.update(score=r["score"], z=r["z"], p_value=r["p_value"], verdict=r["verdict"]["label"])
            for x, y in ((a, b), (b, a)):
                score[x][y], z[x][y], verdict[x][y] = r["score"], r["z"], r["verdict"]["label"]
        pairs.append(entry)
    orig = [m["duplicate_of"] if m.get("duplicate_of") is not None else i for i, m in enumerate(info)]
    for i in range(n):
        if info[i].get("error"):
            continue
        score[i][i], verdict[i][i] = 1.0, "same"
        for j in range(n):
            if i != j and not info[j].get("error") and orig[i] == orig[j]:
                score[i][j], verdict[i][j] = 1.0, "same"
            elif orig[i] != i or orig[j] != j:
                oi, oj = orig[i], orig[j]
                if oi != oj:
                    score[i][j], z[i][j], verdict[i][j] = score[oi][oj], z[oi][oj], verdict[oi][oj]
    for i, m in enumerate(info):
        for j in range(i + 1, n):
            if m.get("error") or info[j].get("error"):
                pairs.append({"a": i, "b": j, "error": f"model {i if m.get('error') else j} failed to open"})
    return score, z, verdict, pairs


def _vocab_vote(i: int, j: int, entries: dict[int, CacheEntry]) -> Any:
    vi, vj = entries[i].vocab(), entries[j].vocab()
    if vi is None or vj is None:
        return None

    def loader(e: CacheEntry, keys: dict[Any, int]) -> Callable[[], Any]:
        return lambda: (e.embedding_to_float32(e.embedding()[:]), keys)

    return vocab_direction(i, j, set(vi.keys), set(vj.keys), loader(entries[i], vi.keys), loader(entries[j], vj.keys))


def _trees(fams: list[list[int]], info: list[dict[str, Any]], results: dict[tuple[int, int], dict[str, Any]],
           entries: dict[int, CacheEntry]) -> list[dict[str, Any]]:  # fmt: skip
    edges: list[dict[str, Any]] = []
    for fam in fams:
        members = [i for i in fam if i in entries]
        scores: dict[tuple[int, int], float] = {}
        dirs: dict[tuple[int, int], Direction] = {}
        for x, i in enumerate(members):
            for j in members[x + 1 :]:
                key, swap = ((i, j), False) if (i, j) in results else ((j, i), True)
                r = results.get(key)
                if r is None or "error" in r:
                    continue
                oriented = _orient(r, swap)
                scores[(i, j)] = float(r["score"])
                dirs[(i, j)] = direction(i, j, info, oriented, _vocab_vote(i, j, entries))
        edges.extend(lineage_tree(members, scores, dirs))
        for d in fam:
            o = info[d].get("duplicate_of")
            if o is not None:
                edges.append({"parent": o, "child": d, "score": 1.0, "directed": False,
                              "evidence": [f"identical content (same fingerprint) as model {o}"]})  # fmt: skip
    return edges


def _assemble(specs: list[str], info: list[dict[str, Any]], results: dict[tuple[int, int], dict[str, Any]],
              entries: dict[int, CacheEntry], null_name: str, zr: float) -> MatrixResult:  # fmt: skip
    n = len(specs)
    score, z, verdict, pairs = _fill(n, info, results)
    related = [(a, b) for (a, b), r in results.items() if r.get("verdict", {}).get("label") == "related"]
    fams = families(n, related, members=sorted(entries))
    for i, m in enumerate(info):  # duplicates join their original's family
        if m.get("duplicate_of") is not None:
            for fam in fams:
                if m["duplicate_of"] in fam:
                    fam.append(i)
                    fam.sort()
    tree = _trees(fams, info, results, entries)
    return MatrixResult(models=info, score=score, z=z, verdict=verdict, pairs=pairs, families=fams,
                        family_rule=family_rule(zr, null_name), tree=tree, results=results)  # fmt: skip
