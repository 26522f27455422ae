"""Frozen records that flow through the pipeline.

Arrays are float32 unless said otherwise; shapes are given per field. Every
record that reaches a user has ``to_dict()`` returning JSON-ready values, so
a result can be stored, audited and re-plotted without reloading weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Version of the JSON result schema (``schema_version`` in every result). Bump it when a field changes meaning
#: or disappears; adding fields does not.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TensorRef:
    """Where one matrix the method needs lives, and how it was recognised.

    ``name`` is the tensor's name in the checkpoint; ``role`` its canonical
    (GGUF) name such as ``blk.3.attn_q``. For fused QKV tensors ``part`` says
    which block to cut out (``q`` or ``k``) and ``layout`` how the blocks are
    arranged (see :mod:`awmtrace.arch.qkv`). ``transposed`` marks Conv1D
    weights stored as ``(d_in, d_out)``. ``expert`` numbers MoE experts.
    """

    name: str
    role: str
    how: str
    part: str | None = None
    layout: str | None = None
    transposed: bool = False
    expert: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "role": self.role, "how": self.how}
        if self.part is not None:
            d["part"] = self.part
            d["layout"] = self.layout
        if self.transposed:
            d["transposed"] = True
        if self.expert is not None:
            d["expert"] = self.expert
        return d


@dataclass(frozen=True)
class LayerRefs:
    """The matrices of one transformer block: attention Q and K, optional FFN inputs.

    ``up`` and ``gate`` hold one entry for a dense FFN and one per expert for
    MoE blocks (shared experts included, with ``expert`` set to ``-1``).
    ``attn_norm`` / ``ffn_norm`` are the norm weights (gamma, ``(hidden,)``)
    that feed Q/K and the FFN inputs; ``None`` when the family's norm has no
    weight or the checkpoint lacks it. For post-LN models (BERT) they can be
    another block's tensor, and parallel blocks can share one.
    """

    index: int
    q: TensorRef
    k: TensorRef
    up: tuple[TensorRef, ...] = ()
    gate: tuple[TensorRef, ...] = ()
    attn_norm: TensorRef | None = None
    ffn_norm: TensorRef | None = None


@dataclass(frozen=True)
class ModelView:
    """What a checkpoint means: its shapes, and where each needed tensor is."""

    path: str
    format: str  # "safetensors" | "gguf" | "torch"
    architecture: str  # as declared (config "architectures"/"model_type", or GGUF general.architecture)
    family: str  # key of the entry in architectures.toml that resolved it
    hidden_size: int
    n_layers: int
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None
    vocab_size: int  # rows of the token embedding
    embedding: TensorRef
    layers: tuple[LayerRefs, ...]
    tokenizer_source: str | None = None
    notes: tuple[str, ...] = ()
    family_reason: str = ""  # why this family was chosen (what the checkpoint declares)
    norm_kind: str = "none"  # "rms" | "layer" | "none": the norm feeding attention (architectures.toml)
    norm_offset: float = 0.0  # 1.0 where a stored weight w means the gain 1 + w (Gemma's HF checkpoints)

    def summary(self) -> dict[str, Any]:
        """The fields a report needs to say what was compared."""
        return {
            "path": self.path,
            "format": self.format,
            "architecture": self.architecture,
            "family": self.family,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tokenizer_source": self.tokenizer_source,
            "family_reason": self.family_reason,
            "norm_kind": self.norm_kind,
            "norm_offset": self.norm_offset,
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["tensors"] = {"embedding": self.embedding.to_dict(), "layers": []}
        for layer in self.layers:
            entry: dict[str, Any] = {"index": layer.index, "q": layer.q.to_dict(), "k": layer.k.to_dict()}
            if layer.up:
                entry["up"] = [r.to_dict() for r in layer.up]
            if layer.gate:
                entry["gate"] = [r.to_dict() for r in layer.gate]
            for key in ("attn_norm", "ffn_norm"):
                ref = getattr(layer, key)
                if ref is not None:
                    entry[key] = ref.to_dict()
            d["tensors"]["layers"].append(entry)
        return d


@dataclass(frozen=True, eq=False)
class Alignment:
    """Hidden-dimension correspondence between two models.

    The model with the larger hidden size is the base (``base`` is ``"a"`` or
    ``"b"``; ``"a"`` on ties). ``method`` is ``"lap"`` (index + signs) or
    ``"orthogonal"`` (``rotation``). For LAP, ``index[i]`` is the base dimension
    matched to dimension ``i`` of the other model and ``signs[i]`` (+1/-1) the
    sign of their cosine; shapes ``index``, ``signs``, ``cosines``: ``(n_other,)``
    (they hold the LAP solution for either method, as evidence). ``rotation``:
    float32 ``(n_base, n_other)`` with orthonormal columns such that
    ``E_other ~ s * E_base @ rotation`` on the shared-token rows; when set, the
    base model's samples ``X_base`` ``(n_base, d_out)`` are aligned as
    ``rotation.T @ X_base`` and the other model's are used as they are.
    ``tokens``: how token rows were matched (``"vocab"`` | ``"ids"``).
    ``quality``: the alignment evidence (see :func:`awmtrace.core.align.choose_alignment`),
    ``reason``: the rule that chose ``method``; ``requested``: the ``align`` option.
    """

    index: np.ndarray
    signs: np.ndarray
    cosines: np.ndarray
    base: str
    hidden_size_a: int
    hidden_size_b: int
    n_shared_tokens: int
    method: str = "lap"  # "lap" | "orthogonal"
    tokens: str = "vocab"  # "vocab" | "ids"
    rotation: np.ndarray | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    requested: str = "auto"

    @property
    def n_sign_flips(self) -> int:
        return int(np.count_nonzero(self.signs < 0))

    @property
    def is_identity(self) -> bool:
        if self.rotation is not None:
            return False
        return bool(np.array_equal(self.index, np.arange(self.index.size)) and self.n_sign_flips == 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tokens": self.tokens,
            "requested": self.requested,
            "reason": self.reason,
            "quality": dict(self.quality),
            "base": self.base,
            "hidden_size_a": self.hidden_size_a,
            "hidden_size_b": self.hidden_size_b,
            "n_shared_tokens": self.n_shared_tokens,
            # LAP figures describe the LAP solution (the one applied unless method is "orthogonal").
            "n_sign_flips": self.n_sign_flips,
            "identity": self.is_identity,
            "mean_abs_cosine": float(np.mean(np.abs(self.cosines))) if self.cosines.size else float("nan"),
        }


@dataclass(frozen=True)
class LayerScore:
    """UCKA of one matched layer pair (``index_a`` of A against ``index_b`` of B)."""

    index_a: int
    index_b: int
    score_q: float
    score_k: float

    @property
    def score(self) -> float:
        return (self.score_q + self.score_k) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_a": self.index_a,
            "index_b": self.index_b,
            "score_q": self.score_q,
            "score_k": self.score_k,
            "score": self.score,
        }


@dataclass(frozen=True)
class FfnLayerScore:
    """UCKA of one FFN input projection (``up`` or ``gate``) for a matched layer pair.

    For MoE layers ``expert_a``/``expert_b`` name the best-matching experts
    (``None`` for a dense FFN, ``-1`` for a shared expert).
    """

    weight: str
    index_a: int
    index_b: int
    score: float
    expert_a: int | None = None
    expert_b: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "index_a": self.index_a,
            "index_b": self.index_b,
            "score": self.score,
            "expert_a": self.expert_a,
            "expert_b": self.expert_b,
        }


@dataclass(frozen=True)
class Verdict:
    """A label and the rule that produced it, so a reader can judge it.

    ``decided_by``: ``"null"`` when the null's z gave the label (the
    size-aware check, if any, agreed) or ``"permutation"`` when the permutation
    check held a related call back; ``null``: that null's name;
    ``permutation``: the check (n_samples, sd, sd_kind, z, p_bound, threshold,
    passed), ``None`` when it was not made.
    """

    label: str  # "related" | "inconclusive" | "independent"
    rule: str
    statistic: str = "z"
    thresholds: dict[str, float] = field(default_factory=dict)  # {"related": 5.0, "inconclusive": 3.0, "permutation": 10.0}
    decided_by: str = "null"
    null: str = ""
    permutation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "rule": self.rule,
            "statistic": self.statistic,
            "thresholds": dict(self.thresholds),
            "decided_by": self.decided_by,
            "null": self.null,
            "permutation": dict(self.permutation) if self.permutation is not None else None,
        }


@dataclass(frozen=True)
class NullModel:
    """A reference distribution of scores of independent model pairs.

    ``scores`` holds the raw per-pair scores when known (empty when only a
    published summary exists). ``provenance`` says which pairs, which tool
    version and where the numbers come from.
    """

    name: str
    mean: float
    std: float
    n: int
    scores: tuple[float, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self, with_scores: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "has_raw_scores": bool(self.scores),
            # The smallest empirical p-value this null can give: 1 / (n + 1).
            "empirical_resolution": 1.0 / (len(self.scores) + 1) if self.scores else None,
            "provenance": self.provenance,
            "source": self.source,
        }
        if with_scores:
            d["scores"] = list(self.scores)
        return d


@dataclass(frozen=True)
class PairResult:
    """Everything one comparison found, and every decision taken on the way."""

    a: dict[str, Any]
    b: dict[str, Any]
    score: float
    score_q: float
    score_k: float
    layers: tuple[LayerScore, ...]
    alignment: dict[str, Any]
    layer_matching: dict[str, Any]
    z: float
    p_value: float
    p_empirical: float | None
    verdict: Verdict
    null: dict[str, Any]
    ffn: dict[str, Any] | None = None
    device: str = "cpu"
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    tool_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "awmtrace", "version": self.tool_version},
            "a": self.a,
            "b": self.b,
            "score": self.score,
            "score_q": self.score_q,
            "score_k": self.score_k,
            "layers": [layer.to_dict() for layer in self.layers],
            "alignment": self.alignment,
            "layer_matching": self.layer_matching,
            "ffn": self.ffn,
            "z": self.z,
            "p_value": self.p_value,
            "p_empirical": self.p_empirical,
            "verdict": self.verdict.to_dict(),
            "null": self.null,
            "device": self.device,
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
        }
