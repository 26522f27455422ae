"""Families: models linked by chains of 'related' verdicts (connected components)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx  # type: ignore[import-untyped]

__all__ = ["families", "family_rule"]


def family_rule(z_related: float, null_name: str) -> str:
    """The rule, in words, for the output."""
    return (
        f"two models are in one family when a chain of pairs whose verdict is 'related' (z >= {z_related:g} under the "
        f"{null_name!r} null) links them (connected components of the 'related' graph); duplicates join their original's family"
    )


def families(n: int, related: Iterable[tuple[int, int]], members: Sequence[int] | None = None) -> list[list[int]]:
    """Connected components over ``members`` (default all ``n``) joined by ``related`` pairs.

    Each component is sorted; components come largest first, then by first index.
    """
    g: nx.Graph[int] = nx.Graph()
    g.add_nodes_from(range(n) if members is None else members)
    g.add_edges_from((a, b) for a, b in related if a in g and b in g)
    comps = [sorted(c) for c in nx.connected_components(g)]
    comps.sort(key=lambda c: (-len(c), c[0]))
    return comps
