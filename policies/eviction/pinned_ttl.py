"""Pinned prefixes with a time to live (the ask of vllm-project/vllm#8333): leading blocks of a
prefix that several requests share stay cached for `ttl_s` seconds after their last use, even
when LRU would evict them; everything else is LRU (release order, keyless blocks first).

Which prefixes are pinned: a block is pinnable if its depth is below `pin_depth` (the first
`pin_depth` blocks of a prompt: set it to the system prompt's length in blocks to pin exactly
the system prompt) and it has been hit at least `min_hits` times since cached (so a prefix is
pinned once it is shared; one-off prompts' heads are not). The pin starts when the block is
released and lasts `ttl_s` simulated seconds; a hit takes the block out and its next release
starts a new pin.

Never a deadlock: pins only order the victims. If every evictable block is pinned and an
allocation needs blocks, pins are broken oldest first (the pin that would expire soonest) and
counted in `policy_stats.pins_broken`. An expired pin makes its block the next victim (it has
not been used for `ttl_s`). Prefix dependence: every hit on a block hits its parent too and a
chain is released together, so the pinned blocks of a chain are a prefix of it: pins never
keep a child whose parent can go.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class PinnedTTLConfig(EvictionConfig):
    name: str = "pinned_ttl"
    pin_depth: int = 64  # blocks at depth < pin_depth are pinnable
    min_hits: int = 1  # hits since cached before a block is pinned
    ttl_s: float = 60.0  # simulated seconds a pin lasts after the block's last use


@register_eviction("pinned_ttl", PinnedTTLConfig)
class PinnedTTLPolicy(KeylessFirstPolicy):
    uses_tree = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if cfg.pin_depth < 0 or cfg.min_hits < 0 or not cfg.ttl_s > 0:
            raise ValueError("pinned_ttl: need pin_depth >= 0, min_hits >= 0, ttl_s > 0")
        self._hits: dict[int, int] = {}  # keyed block_id -> hits since cached
        self._lru: OrderedDict[int, Block] = OrderedDict()  # unpinned evictable keyed, LRU first
        self._pinned: OrderedDict[int, tuple[float, Block]] = OrderedDict()  # release order = expiry order
        self.pins_broken = 0
        self.pins_expired = 0

    def on_insert(self, block: Block) -> None:
        self._hits[block.block_id] = 0

    def on_hit(self, block: Block) -> None:
        self._hits[block.block_id] += 1

    def _kadd(self, block: Block) -> None:
        bid = block.block_id
        if block.depth < self.cfg.pin_depth and self._hits[bid] >= self.cfg.min_hits:
            self._pinned[bid] = (self.ctx.clock.now + self.cfg.ttl_s, block)
        else:
            self._lru[bid] = block

    def _kremove(self, block: Block, evicted: bool) -> None:
        bid = block.block_id
        if self._lru.pop(bid, None) is None:
            del self._pinned[bid]
            if evicted:
                self.pins_broken += 1  # victim() offered a pinned block: no unpinned one was left
        if evicted:
            del self._hits[bid]

    def _expire(self) -> None:
        now = self.ctx.clock.now
        while self._pinned:
            bid, (until, b) = next(iter(self._pinned.items()))
            if until > now:
                break
            del self._pinned[bid]
            self._lru[bid] = b
            self._lru.move_to_end(bid, last=False)  # unused for ttl_s: the next victim
            self.pins_expired += 1

    def _kvictim(self) -> Block:
        self._expire()
        if self._lru:
            return next(iter(self._lru.values()))
        return next(iter(self._pinned.values()))[1]  # break the oldest pin

    def _klen(self) -> int:
        return len(self._lru) + len(self._pinned)

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._lru or block.block_id in self._pinned

    def stats(self) -> dict:
        return {"pins_broken": self.pins_broken, "pins_expired": self.pins_expired}

    def verify(self) -> None:
        super().verify()
        assert not (set(self._lru) & set(self._pinned)), "a block is both pinned and not"
        ends = [until for until, _ in self._pinned.values()]
        assert ends == sorted(ends), "pins out of expiry order"
