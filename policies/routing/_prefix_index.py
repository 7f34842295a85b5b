"""The router's own picture of each replica's cache, built only from its past decisions.

A request routed to replica r is assumed to leave its prompt's blocks cached there; each replica
gets an LRU of block keys bounded by `capacity` blocks (by default its real cache size), so old
prefixes age out roughly as the replica would evict them. The index never sees the replica's
real cache: it is wrong when the replica evicted earlier (memory pressure, preemption) or holds
blocks the router did not predict (output tokens of a turn). llm-d's approximate prefix-cache
scorer and SGLang's cache-aware router keep such an index (a radix tree in SGLang's case).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence


class ApproxPrefixIndex:
    def __init__(self, capacities: Sequence[int]) -> None:
        if min(capacities) < 1:
            raise ValueError("the router's prefix index needs a capacity of at least one block a replica")
        self.capacities = list(capacities)
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in capacities]

    def matched(self, replica: int, keys: Sequence[int]) -> int:
        """Leading blocks of `keys` the index believes `replica` holds."""
        lru, n = self._lru[replica], 0
        for k in keys:
            if k not in lru:
                break
            n += 1
        return n

    def size(self, replica: int) -> int:
        return len(self._lru[replica])

    def record(self, replica: int, keys: Sequence[int]) -> None:
        """`keys` were just sent to `replica`: most recently used, the oldest beyond capacity dropped."""
        lru = self._lru[replica]
        for k in keys:
            if k in lru:
                lru.move_to_end(k)
            else:
                lru[k] = None
        cap = self.capacities[replica]
        while len(lru) > cap:
            lru.popitem(last=False)
