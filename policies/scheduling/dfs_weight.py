"""SGLang's `dfs-weight` order: waiting requests grouped by their cached prefixes, the biggest
group first, so requests sharing a prefix are admitted together while it is resident.

Each waiting request is placed in a tree at the end of its cached prefix (the keys of its
cached leading blocks); a node's weight is the number of waiting requests at or below it. The
order is a depth-first walk from the root that takes a node's own requests (in arrival order),
then its children by weight, heaviest first (ties: the child whose first request arrived
earliest). Requests with nothing cached sit at the root and come first, in arrival order;
SGLang likewise serves them before descending.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling._ranked import RankedConfig, RankedPolicy


@dataclass
class DFSWeightConfig(RankedConfig):
    name: str = "dfs_weight"


class _Node:
    __slots__ = ("children", "requests", "weight", "first")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.requests: list = []
        self.weight = 0
        self.first = float("inf")  # earliest arrival order in the subtree


@register_scheduling("dfs_weight", DFSWeightConfig)
class DFSWeightPolicy(RankedPolicy):
    def rank(self, window: list) -> list:
        root = _Node()
        arrival = self._arrival
        for r in window:  # window is in queue order; record arrival for ties
            n = self.cached_blocks(r)
            node = root
            path = [root]
            for key in r.block_keys[:n]:  # filled by the cache probe up to at least n
                node = node.children.setdefault(key, _Node())
                path.append(node)
            node.requests.append(r)
            for p in path:
                p.weight += 1
                p.first = min(p.first, arrival[r])
        out: list = []
        stack = [root]
        while stack:
            node = stack.pop()
            out.extend(node.requests)
            kids = sorted(node.children.values(), key=lambda c: (-c.weight, c.first))
            stack.extend(reversed(kids))
        return out
