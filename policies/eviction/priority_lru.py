"""Retention priorities as TensorRT-LLM's KV cache has them: each block carries a priority in
0..100 (higher is kept longer) and optionally a duration after which it decays to the default;
the victim is the evictable block of lowest current priority, least recently released first.

Where a block's priority comes from, first match wins, fixed when the block is released:
1. the first of the releasing request's `RequestSpec.retention_ranges` that holds the block's
   first token (token `depth * block_size`): TensorRT-LLM's KvCacheRetentionConfig maps token
   ranges to blocks by the block's first token the same way, so a block that straddles a range's
   end (system prompt, then the question) is retained with the range;
2. the releasing request's `RequestSpec.retention_priority` (and `retention_duration_s`), a
   per-request field a workload or trace can set (e.g. a tenant tier or a priority class); it
   also covers the request's output blocks (TensorRT-LLM's decode retention priority);
3. the first entry of `depth_ranges` whose [first_block, last_block] holds the block's depth
   (TensorRT-LLM's KvCacheRetentionConfig gives priorities to token ranges the same way; here a
   range is in blocks and holds for every request, e.g. `{first_block: 0, last_block: 31,
   priority: 90}` keeps 32-block system prompts);
4. `default_priority` (TensorRT-LLM's default is 35) with `default_duration_s`.
The duration counts from the release (the block's last use); null means forever. A block used
by several requests gets the priority of the one that releases it last.

Prefix dependence: leaves first by default (`leaves_only`, see `_priority`), so a high-priority
prefix is eaten from its tail and never left headless; a range over leading blocks keeps every
parent at least as long as its children.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import List, Optional

from policies.eviction._priority import PriorityEvictionConfig, PriorityEvictionPolicy
from policies.registry import register_eviction
from policies.types import Block

MIN_PRIORITY, MAX_PRIORITY = 0, 100


@dataclass
class RetentionRange:
    first_block: int = 0
    last_block: Optional[int] = None  # inclusive; null: to the end of the prompt
    priority: int = 35
    duration_s: Optional[float] = None


@dataclass
class PriorityLRUConfig(PriorityEvictionConfig):
    name: str = "priority_lru"
    default_priority: int = 35
    default_duration_s: Optional[float] = None
    depth_ranges: List[RetentionRange] = field(default_factory=list)


def _check_priority(p, what: str) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or not MIN_PRIORITY <= p <= MAX_PRIORITY:
        raise ValueError(f"{what} must be an integer in {MIN_PRIORITY}..{MAX_PRIORITY}, got {p!r}")
    return p


def _check_duration(d, what: str):
    if d is not None and not d > 0:
        raise ValueError(f"{what} must be > 0 seconds or null, got {d!r}")
    return d


@register_eviction("priority_lru", PriorityLRUConfig)
class PriorityLRUPolicy(PriorityEvictionPolicy):
    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.default = _check_priority(cfg.default_priority, "priority_lru.default_priority")
        self.default_duration = _check_duration(cfg.default_duration_s, "priority_lru.default_duration_s")
        self.ranges = []
        for i, r in enumerate(cfg.depth_ranges):
            if isinstance(r, dict):
                r = RetentionRange(**r)
            last = math.inf if r.last_block is None else r.last_block
            if r.first_block < 0 or last < r.first_block:
                raise ValueError(f"priority_lru.depth_ranges[{i}]: need 0 <= first_block <= last_block")
            self.ranges.append((r.first_block, last, _check_priority(r.priority, f"priority_lru.depth_ranges[{i}].priority"),
                                _check_duration(r.duration_s, f"priority_lru.depth_ranges[{i}].duration_s")))
        self._releasing: tuple[int, float | None] | None = None  # the request being freed
        self._releasing_ranges: list[tuple] = []  # its (start, end, priority, duration) token ranges
        self._prio: dict[int, int] = {}  # block_id -> priority it was filed under
        self._expiry: list[tuple[float, int, int]] = []  # (when, block_id, stamp) of finite durations
        self._expiry_stamp: dict[int, int] = {}
        self._n = 0
        self.num_decayed = 0

    def before_release(self, request) -> None:
        spec = request.spec
        p = getattr(spec, "retention_priority", None)
        if p is None:
            self._releasing = None
        else:
            self._releasing = (_check_priority(p, f"request {spec.request_id}: retention_priority"),
                               _check_duration(getattr(spec, "retention_duration_s", None),
                                               f"request {spec.request_id}: retention_duration_s"))
        self._releasing_ranges = [
            (r.start, r.end, _check_priority(r.priority, f"request {spec.request_id}: retention_ranges priority"),
             _check_duration(r.duration_s, f"request {spec.request_id}: retention_ranges duration_s"))
            for r in getattr(spec, "retention_ranges", ())]

    def _assign(self, block: Block) -> tuple[int, float | None]:
        if self._releasing_ranges:
            first_token = block.depth * self.ctx.block_size
            for start, end, p, d in self._releasing_ranges:
                if start <= first_token < end:
                    return p, d
        if self._releasing is not None:
            return self._releasing
        for first, last, p, d in self.ranges:
            if first <= block.depth <= last:
                return p, d
        return self.default, self.default_duration

    def on_release(self, block: Block) -> None:
        bid = block.block_id
        if block.key is not None:
            p, d = self._assign(block)
            self._prio[bid] = p
            if d is not None and p != self.default:
                self._n += 1
                self._expiry_stamp[bid] = self._n
                heapq.heappush(self._expiry, (self.ctx.clock.now + d, bid, self._n))
        super().on_release(block)

    def on_release_many(self, blocks: list[Block]) -> None:
        for b in blocks:
            self.on_release(b)
        self._releasing = None
        self._releasing_ranges = []

    def priority(self, block: Block) -> tuple:
        return (self._prio[block.block_id],)

    def _leave(self, block: Block) -> None:
        self._prio.pop(block.block_id, None)
        self._expiry_stamp.pop(block.block_id, None)
        super()._leave(block)

    def _decay(self) -> None:
        """Blocks whose duration ran out fall to the default priority (release order kept)."""
        now, heap = self.ctx.clock.now, self._expiry
        while heap and heap[0][0] <= now:
            _, bid, stamp = heapq.heappop(heap)
            if self._expiry_stamp.get(bid) != stamp:
                continue
            del self._expiry_stamp[bid]
            self._prio[bid] = self.default
            self.num_decayed += 1
            self._version.pop(bid, None)
            self._push(self._members[bid])

    def victim(self) -> Block:
        self._decay()
        return super().victim()

    def stats(self) -> dict:
        return {"priorities_decayed": self.num_decayed}
