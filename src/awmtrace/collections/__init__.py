"""Collections: every pair of N models from a per-model cache, grouped into families with a lineage tree.

Per-model work (reading weights, Q/K Gram matrices, the embedding used for
alignment) is done once and cached on disk (:mod:`.cache`); a pair is then
scored from two cache entries (:mod:`.pairs`), locally or on Ray
(:mod:`.engine`); :mod:`.families` and :mod:`.tree` read the scores;
:mod:`.matrix` ties it together behind :func:`awmtrace.matrix`.
"""
