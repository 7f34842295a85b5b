"""The cluster's offline bound: the hit rate of ONE cache with the cluster's whole capacity.

Routing decides which of N separate caches sees each prompt; one pooled cache of their total
size removes that choice (every prefix is cached once, in one place). The bound replays the
requests, in the order they reached the cluster, through such a cache with no timing at all: a
request looks up the leading blocks of its prompt (hits, in tokens, as the engine counts them),
then its prompt and output blocks are cached, tail first (so an LRU evicts a chain from its
tail, as vLLM frees). Blocks held by running requests take no room here, so the replay is an
optimistic reference for any router, not a theorem about one run: a cluster can beat the LRU
replay when its replicas are idle more than the replay's single stream assumes, and LRU's
eviction order is not optimal. Belady on the same stream (evict the block used farthest in the
future; never cache a block that is not used again) is the ceiling for any eviction policy of
that pooled cache, block by block.

Run with `cluster_bound=true`; metrics.json's cluster.pooled_bound has both hit rates.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Sequence

from apcsim.core.request import Request, RequestSpec

INF = float("inf")


def request_blocks(specs: Sequence[RequestSpec], order: Sequence[int], output_seed: int, kv) -> list[tuple[list[int], int, int]]:
    """Per request, in `order`: (keys of its full blocks over prompt and output, blocks of its
    prompt a lookup may hit, prompt tokens), keyed by the replicas' own key function."""
    bs = kv.block_size
    out = []
    for i in order:
        spec = specs[i]
        r = Request(spec=spec, index=i, output_seed=output_seed)
        full = (spec.prompt_len + spec.output_len - 1) // bs  # the last output token has no KV
        out.append((list(kv.block_keys(r, full)[:full]), (spec.prompt_len - 1) // bs, spec.prompt_len))
    return out


def _leading(keys: list[int], n: int, held) -> int:
    m = 0
    for k in keys[:n]:
        if k not in held:
            break
        m += 1
    return m


def lru_hit_rate(stream, capacity: int, block_size: int) -> float:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = queries = 0
    for keys, can_hit, prompt in stream:
        queries += prompt
        hits += _leading(keys, can_hit, cache) * block_size
        for k in reversed(keys):  # tail first: the chain's head is the most recently used
            if k in cache:
                cache.move_to_end(k)
            else:
                cache[k] = None
        while len(cache) > capacity:
            cache.popitem(last=False)
    return hits / queries if queries else 0.0


def belady_hit_rate(stream, capacity: int, block_size: int) -> float:
    uses: dict[int, deque] = {}
    for rank, (keys, _, _) in enumerate(stream):
        for k in keys:
            uses.setdefault(k, deque()).append(rank)
    cache: dict[int, float] = {}  # key -> its next use
    heap: list[tuple[float, int]] = []  # (-next use, key), stale entries skipped
    hits = queries = 0
    for keys, can_hit, prompt in stream:
        queries += prompt
        hits += _leading(keys, can_hit, cache) * block_size
        for k in keys:
            q = uses[k]
            q.popleft()
            nxt = q[0] if q else INF
            if nxt == INF:
                cache.pop(k, None)  # never used again: keeping it can only cost room
                continue
            cache[k] = nxt
            heapq.heappush(heap, (-nxt, k))
        while len(cache) > capacity:
            neg, k = heapq.heappop(heap)
            if cache.get(k) == -neg:
                del cache[k]
    return hits / queries if queries else 0.0


def pooled_bound(specs: Sequence[RequestSpec], order: Sequence[int], output_seed: int, kv, capacity: int) -> dict:
    stream = request_blocks(specs, order, output_seed, kv)
    bs = kv.block_size
    return {"capacity_blocks": capacity, "lru_hit_rate": lru_hit_rate(stream, capacity, bs),
            "belady_hit_rate": belady_hit_rate(stream, capacity, bs)}
