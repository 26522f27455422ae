"""Lean Hugging Face Hub access: only the files and byte ranges the method reads.

A repo id (``org/name[@revision]``, a Hub URL, ``hf://org/name``, a legacy
single name, or ``org/name:FILE.gguf`` / ``org/name:QUANT`` for one GGUF file)
becomes a local directory that the normal readers open: ``config.json``, the
tokenizer file the vocabulary reader would pick and its small sidecars, and,
for safetensors checkpoints, one safetensors file per shard holding only the
tensors the caller's selector names (token embedding and attention Q/K; the
FFN input projections when asked). A 7B model needs about a sixth of its
bytes, a 70B model about a tenth (see ``benchmarks/hub_fraction.py``).

The package follows the seams of the job:

* :mod:`~awmtrace.io.hub.repo`: repo ids and the environment;
* :mod:`~awmtrace.io.hub.http`: HTTP with checked range reads;
* :mod:`~awmtrace.io.hub.cache`: the cache layout and its snapshots;
* :mod:`~awmtrace.io.hub.plan`: the download planner (safetensors headers via
  :mod:`awmtrace.io.safetensors_header`, shared with local files);
* :mod:`~awmtrace.io.hub.download`: resumable, checked downloads, published by one rename;
* :mod:`~awmtrace.io.hub.fetcher`: :func:`fetch` and :func:`ensure_local`.
"""

from awmtrace.io.hub.cache import MANIFEST_NAME, snapshot_commit_date, snapshot_identity
from awmtrace.io.hub.fetcher import FetchResult, ensure_local, fetch
from awmtrace.io.hub.http import Progress
from awmtrace.io.hub.plan import HeaderSource, Selector
from awmtrace.io.hub.repo import RepoRef, cache_root, is_offline, looks_like_repo_id, parse_repo_id

__all__ = [
    "RepoRef",
    "FetchResult",
    "HeaderSource",
    "Selector",
    "Progress",
    "MANIFEST_NAME",
    "parse_repo_id",
    "looks_like_repo_id",
    "fetch",
    "ensure_local",
    "cache_root",
    "snapshot_identity",
    "snapshot_commit_date",
    "is_offline",
]
