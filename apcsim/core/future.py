"""The offline future oracle for `belady`: when will each block key next be looked up?

The workload is built before the run, so every request's prompt is known up front. A request's
prompt can hit the blocks whose keys are the first (prompt_len - 1) // block_size keys of its
chain (the KV cache manager always computes the last prompt token); those keys are computed with
the manager's own key function (`prompt_keys`, same block size, cache salt, hash and content-id keys).

Time is the request's *arrival rank*: requests sorted by (spec arrival time, workload index).
A follow-up turn's spec time is only its earliest arrival (it comes after its parent finishes),
so its rank is a lower bound on when it is really looked up. A request's uses are spent when the
scheduler admits it for the first time (`consume`); `next_use(key)` is the smallest rank among
requests not yet admitted whose chain holds the key. Requests admitted out of rank order are
handled: spent ranks are skipped lazily. A preempted request looks its prompt up again when it
resumes; that second lookup is not in the oracle (its uses were spent at first admission), so
under heavy preemption `belady` is slightly pessimistic about keeping a preempted request's blocks.

Prefix dependence comes for free: every request whose chain holds a child key holds its parent's
key too, so next_use(parent) <= next_use(child) always.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from apcsim.core.block_hash import HashAlgo, get_hash_algo
from apcsim.core.kv_cache_manager import prompt_keys
from apcsim.core.request import RequestSpec


class FutureOracle:
    def __init__(self, specs: Sequence[RequestSpec], block_size: int, algo: HashAlgo | None = None,
                 content_keys: bool = True) -> None:
        algo = algo or get_hash_algo("xxh3_64")  # the manager's default
        order = sorted(range(len(specs)), key=lambda i: (specs[i].arrival_time, i))
        self.rank_of = [0] * len(specs)  # workload index -> arrival rank
        for rank, i in enumerate(order):
            self.rank_of[i] = rank
        self._keys: list[list[int]] = [[] for _ in specs]  # by rank
        self._uses: dict[int, list[int]] = {}  # key -> ranks that can hit it, ascending
        for rank, i in enumerate(order):
            spec = specs[i]
            n = (spec.prompt_len - 1) // block_size
            keys = prompt_keys(spec, n, block_size, algo, content_keys)
            self._keys[rank] = keys
            for k in keys:
                self._uses.setdefault(k, []).append(rank)
        self._head: dict[int, int] = {}  # key -> index into _uses[key] of its first unspent rank
        self._spent = [False] * len(specs)
        self._listeners: list[Callable[[list[int]], None]] = []

    def next_use(self, key: int) -> float:
        uses = self._uses.get(key)
        if uses is None:
            return math.inf
        j = self._head.get(key, 0)
        spent = self._spent
        while j < len(uses) and spent[uses[j]]:
            j += 1
        self._head[key] = j
        return uses[j] if j < len(uses) else math.inf

    def subscribe(self, fn: Callable[[list[int]], None]) -> None:
        self._listeners.append(fn)

    def consume(self, index: int) -> None:
        """The request at workload `index` was admitted for the first time: its uses are spent."""
        rank = self.rank_of[index]
        if self._spent[rank]:
            return
        self._spent[rank] = True
        keys = self._keys[rank]
        for fn in self._listeners:
            fn(keys)


class StaticFuture:
    """A fixed table of next uses (key -> rank; missing keys: never again). For tests, and for
    driving a future-aware policy by hand; `consume` re-announces keys to subscribers."""

    def __init__(self, next_uses: dict[int, float] | Callable[[int], float]) -> None:
        self._table = next_uses
        self._listeners: list[Callable[[list[int]], None]] = []

    def next_use(self, key: int) -> float:
        t = self._table
        return t(key) if callable(t) else t.get(key, math.inf)

    def subscribe(self, fn: Callable[[list[int]], None]) -> None:
        self._listeners.append(fn)

    def set(self, key: int, rank: float) -> None:
        """Change a key's next use (it may only grow, as in a real run) and tell subscribers."""
        assert not callable(self._table)
        self._table[key] = rank
        for fn in self._listeners:
            fn([key])
