"""How often independent pairs of generated models are called related, at every hidden size.

For each hidden size, independent pairs (two seeds) of three kinds of
generated models, and planted related pairs derived from one of them, are
scored the way ``awmtrace.pipeline.compare_models`` scores them (embedding
alignment by LAP, UCKA of Q and K per layer, mean, ``core.stats.assess`` with
the size-aware permutation check and, where it can change the verdict, the
exact permutation sd), in memory so that hidden 4096 stays affordable.
``--pipeline N`` also runs ``N`` pairs per size through the real pipeline on
written checkpoints (sizes <= 256) and checks both routes agree.

Model kinds (independent pairs never share a seed):

* ``gaussian``: i.i.d. Gaussian embedding and weights;
* ``lowrank``: every Q/K of a model reads the same random rank-``n/16``
  input subspace (plus 5 % noise), so its layers are strongly alike and the
  permutation distribution heavy-tailed;
* ``massive``: a few hidden dimensions 30x larger than the rest in the
  embedding and every weight (outlier features).

Reported apart, as a limit of the method rather than of the size-aware check:

* ``shared``: as ``lowrank``, but the embedding lives in the same subspace.
  The alignment then matches one model's subspace to the other's, and even
  independent pairs score ~0.3 at every size (AWM itself calls them related,
  see ``benchmarks/README.md``).

Planted related pairs (from a base of each kind): ``copy`` (hidden dimensions
permuted, sign-flipped, scaled 3x), ``drift`` at 0.1 / 0.3 / 1.0 relative noise
(fine-tune-like), ``pruned`` (a random 3/4 of the hidden dimensions kept).

Usage::

    python benchmarks/size_null.py                                  # the README table (~10 min on 2 cores)
    python benchmarks/size_null.py --sizes 16,32,64 --seeds 10 --pipeline 2

Prints a Markdown table; the exit status is 1 when more than 1 % of the
independent pairs of any size were called related.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from awmtrace import synth
from awmtrace.core import cka, stats
from awmtrace.core.align import CosineAccumulator, assign_dimensions
from awmtrace.nulls import load_null
from awmtrace.types import NullModel

KINDS = ("gaussian", "lowrank", "massive")
DIAGNOSTIC = ("shared",)
RELATED = ("copy", "drift0.1", "drift0.3", "drift1.0", "pruned")
VOCAB = 512
LAYERS = 4


@dataclass(frozen=True)
class Model:
    """``embed``: ``(vocab, n)``; ``q``: ``(n, n)`` per layer; ``k``: ``(max(n//4, 4), n)`` per layer."""

    embed: np.ndarray
    q: list[np.ndarray]
    k: list[np.ndarray]

    @property
    def n(self) -> int:
        return int(self.embed.shape[1])


def generate(kind: str, n: int, seed: int, layers: int = LAYERS) -> Model:
    rng = np.random.default_rng(seed)
    n_k = max(n // 4, 4)

    def g(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    if kind == "gaussian":
        return Model(g(VOCAB, n) * np.float32(0.02), [g(n, n) for _ in range(layers)], [g(n_k, n) for _ in range(layers)])
    if kind in ("lowrank", "shared"):
        r = max(2, n // 16)
        basis = g(r, n)  # the model's input subspace, shared by its embedding and every layer

        def low(rows: int) -> np.ndarray:
            w = g(rows, r) @ basis
            return (w + np.float32(0.05 * np.sqrt(r)) * g(rows, n)).astype(np.float32)

        embed = low(VOCAB) if kind == "shared" else g(VOCAB, n)
        return Model(embed * np.float32(0.02), [low(n) for _ in range(layers)], [low(n_k) for _ in range(layers)])
    if kind == "massive":
        scale = np.ones(n, dtype=np.float32)
        scale[rng.choice(n, size=max(1, n // 64), replace=False)] = 30.0
        return Model(g(VOCAB, n) * scale, [g(n, n) * scale for _ in range(layers)], [g(n_k, n) * scale for _ in range(layers)])
    raise ValueError(kind)


def derive(m: Model, how: str, seed: int) -> Model:
    """A planted relative of ``m`` (see the module docstring)."""
    rng = np.random.default_rng(seed + 10_000)
    if how == "copy":
        perm = rng.permutation(m.n)
        signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=m.n)

        def f(w: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(w[:, perm] * signs * np.float32(3.0))

        return Model(f(m.embed), [f(w) for w in m.q], [f(w) for w in m.k])
    if how.startswith("drift"):
        rel = float(how[len("drift") :])

        def noisy(w: np.ndarray) -> np.ndarray:
            rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
            return (w + rng.standard_normal(w.shape, dtype=np.float32) * np.float32(rel * rms)).astype(np.float32)

        return Model(noisy(m.embed), [noisy(w) for w in m.q], [noisy(w) for w in m.k])
    if how == "pruned":
        keep = np.sort(rng.choice(m.n, size=max(4, m.n * 3 // 4), replace=False))
        return Model(
            np.ascontiguousarray(m.embed[:, keep]),
            [np.ascontiguousarray(w[:, keep]) for w in m.q],
            [np.ascontiguousarray(w[:, keep]) for w in m.k],
        )
    raise ValueError(how)


def samples(m: Model, index: np.ndarray | None, signs: np.ndarray | None) -> list[np.ndarray]:
    """Aligned sample matrices ``(n_other, d_out)``, ordered q0, k0, q1, k1, ... (as the pipeline averages them)."""
    out = []
    for wq, wk in zip(m.q, m.k, strict=True):
        for w in (wq, wk):
            x = w[:, index] if index is not None else w * signs
            out.append(np.ascontiguousarray(x.T))
    return out


def assess_pair(a: Model, b: Model, null: NullModel) -> stats.Assessment:
    """Score and assess ``a`` vs ``b`` as ``compare_models`` does (same depth, all tokens shared)."""
    base, other = (a, b) if a.n >= b.n else (b, a)
    acc = CosineAccumulator(base.n, other.n)
    acc.add(base.embed, other.embed)
    index, signs, _ = assign_dimensions(acc.cosines())
    xs_base, xs_other = samples(base, index, None), samples(other, None, signs)
    scores = [cka.unbiased_linear_cka(x, y) for x, y in zip(xs_base, xs_other, strict=True)]
    score = float(np.mean(scores))
    assessment = stats.assess(score, null, n_samples=other.n)
    if assessment.exact_sd_could_change:
        sd = stats.permutation_sd(other.n, cka.similarity_matrix(xs_base), cka.similarity_matrix(xs_other))
        assessment = stats.assess(score, null, n_samples=other.n, permutation=sd)
    return assessment


def to_synth(m: Model) -> synth.SynthModel:
    """The model as a synth Llama (V, O and FFN random, unused by the score) for the real pipeline."""
    n = m.n
    s = synth.random_llama(hidden=n, n_layers=len(m.q), n_heads=4, n_kv_heads=1, vocab=VOCAB, ffn=8, seed=0)
    return replace(s, embed=m.embed, q=list(m.q), k=list(m.k), head_dim=n // 4)


def pipeline_check(a: Model, b: Model, null: NullModel, root: Path) -> None:
    """Score ``a`` vs ``b`` through ``awmtrace.pipeline.compare`` on written checkpoints; must match :func:`assess_pair`."""
    from awmtrace.pipeline import compare

    pa, pb = synth.write_hf(to_synth(a), root / "a"), synth.write_hf(to_synth(b), root / "b")
    res = compare(pa, pb, null=null, device="cpu", min_shared_tokens=4)
    ref = assess_pair(a, b, null)
    if res.verdict.label != ref.verdict.label or abs(res.z - ref.z) > 1e-3 * max(1.0, abs(ref.z)):
        raise SystemExit(f"pipeline and in-memory route disagree: {res.verdict.label} z={res.z} vs {ref.verdict.label} z={ref.z}")


def run_size(
    n: int, seeds: int, related_seeds: int, null: NullModel, pipeline: int, related_from: tuple[str, ...] = KINDS, diagnostic: bool = True
) -> dict[str, object]:
    t0 = time.perf_counter()
    indep: list[stats.Assessment] = []
    shared: list[stats.Assessment] = []
    related: dict[str, list[stats.Assessment]] = {r: [] for r in RELATED}
    layers = LAYERS if n <= 1024 else 2
    for kind in KINDS + (DIAGNOSTIC if diagnostic else ()):
        models = [generate(kind, n, 1000 * s + 7, layers) for s in range(seeds + 1)]
        for s in range(seeds):
            (shared if kind in DIAGNOSTIC else indep).append(assess_pair(models[s], models[s + 1], null))
            if s < pipeline and n <= 256:
                with tempfile.TemporaryDirectory() as tmp:
                    pipeline_check(models[s], models[s + 1], null, Path(tmp))
        if kind in DIAGNOSTIC or kind not in related_from:
            continue
        for r in RELATED:
            for s in range(related_seeds):
                related[r].append(assess_pair(models[s], derive(models[s], r, s), null))
    row: dict[str, object] = {
        "n": n,
        "sd": stats.permutation_sd(n)[0],
        "independent": len(indep),
        "called_related": sum(a.verdict.label == "related" for a in indep),
        "null_alone_related": sum(a.null_label == "related" for a in indep),
        "max_perm_z": max((a.permutation.z for a in indep if a.permutation), default=float("nan")),
        "shared": f"{sum(a.verdict.label == 'related' for a in shared)}/{len(shared)}" if shared else "-",
        "seconds": time.perf_counter() - t0,
    }
    for r in RELATED:
        row[r] = f"{sum(a.verdict.label == 'related' for a in related[r])}/{len(related[r])}"
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16,32,64,128,256,512,1024,2048,4096")
    p.add_argument("--seeds", type=int, default=40, help="independent pairs per kind and size up to 1024")
    p.add_argument("--big-seeds", type=int, default=4, help="independent pairs per kind above 1024 (2 layers there)")
    p.add_argument("--related-seeds", type=int, default=3, help="planted pairs per relation and kind (1 above 1024)")
    p.add_argument("--related-from", default=",".join(KINDS), help="kinds the planted related pairs are derived from")
    p.add_argument("--no-shared", action="store_true", help="skip the 'shared' diagnostic pairs")
    p.add_argument("--pipeline", type=int, default=0, help="pairs per kind and size (<= 256) also run through the real pipeline")
    args = p.parse_args(argv)
    null = load_null(None)
    rows = []
    for n in map(int, args.sizes.split(",")):
        small = n <= 1024
        seeds, rel_seeds = (args.seeds, args.related_seeds) if small else (args.big_seeds, 1)
        rows.append(run_size(n, seeds, rel_seeds, null, args.pipeline, tuple(args.related_from.split(",")), not args.no_shared))
    head = ["hidden", "perm sd", "indep. pairs", "called related", "null alone: related", "max perm z", *RELATED, "shared: related", "s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["n"], f"{r['sd']:.2g}", r["independent"], r["called_related"], r["null_alone_related"], f"{r['max_perm_z']:.1f}"]
        cells += [r[k] for k in RELATED] + [r["shared"], f"{r['seconds']:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    worst = max(int(r["called_related"]) / int(r["independent"]) for r in rows)  # type: ignore[call-overload]
    return 1 if worst > 0.01 else 0


if __name__ == "__main__":
    sys.exit(main())
