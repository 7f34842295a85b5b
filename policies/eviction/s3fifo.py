"""S3-FIFO (Yang et al., SOSP'23): a small FIFO that filters one-hit wonders, a main FIFO with
lazy promotion, and a ghost FIFO of recently filtered keys.

A newly cached block enters the small queue S, or the main queue M if its key is in the ghost
queue G (it was filtered recently and came back). Hits only raise a 2-bit frequency. To evict:
from S while S holds at least `small_fraction` of the keyed blocks, else from M. At S's old end
a block hit since it came moves to M (frequency reset), an unhit one is the victim and its key
goes to G. At M's old end a hit block loses one frequency and goes back to M's new end, an unhit
one is the victim. Adaptation to a KV pool: blocks in use stay in their queue and are skipped
(moved to their queue's new end, to M if hit), since they cannot be evicted. Prefix dependence
is not used; a shared prefix survives because its hits promote it to M, while a request's
private tail, cached once and never hit, is filtered out of S first.
Keyless blocks go first (see `_keyless`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block

_MAX_FREQ = 3


@dataclass
class S3FIFOConfig(EvictionConfig):
    name: str = "s3fifo"
    small_fraction: float = 0.1  # S's target share of the keyed blocks (the paper's 10%)


@register_eviction("s3fifo", S3FIFOConfig)
class S3FIFOPolicy(KeylessFirstPolicy):
    uses_tree = False
    uses_depth = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if not 0.0 < cfg.small_fraction < 1.0:
            raise ValueError(f"s3fifo small_fraction must be in (0, 1), got {cfg.small_fraction}")
        # Old end first. Both hold every keyed block, in use or not.
        self._small: OrderedDict[int, Block] = OrderedDict()
        self._main: OrderedDict[int, Block] = OrderedDict()
        self._ghost: OrderedDict[int, None] = OrderedDict()  # keys, oldest first
        self._freq: dict[int, int] = {}
        self._members: dict[int, Block] = {}  # evictable keyed blocks
        self._small_members = 0  # how many of them are in S: a scan of S with none is skipped
        self._chosen: Block | None = None  # victim() found it; valid until the next hook

    def on_insert(self, block: Block) -> None:
        self._chosen = None
        bid = block.block_id
        self._freq[bid] = 0
        if block.key in self._ghost:  # filtered out of S recently and back: straight to M
            del self._ghost[block.key]
            self._main[bid] = block
        else:
            self._small[bid] = block

    def on_hit(self, block: Block) -> None:
        self._chosen = None
        bid = block.block_id
        self._freq[bid] = min(self._freq[bid] + 1, _MAX_FREQ)

    def _kadd(self, block: Block) -> None:
        self._chosen = None
        self._members[block.block_id] = block
        self._small_members += block.block_id in self._small

    def _kremove(self, block: Block, evicted: bool) -> None:
        self._chosen = None
        bid = block.block_id
        del self._members[bid]
        in_small = bid in self._small
        self._small_members -= in_small
        if not evicted:
            return
        del self._freq[bid]
        if in_small:
            del self._small[bid]
            self._ghost[block.key] = None
            while len(self._ghost) > self.ctx.num_blocks:
                self._ghost.popitem(last=False)
        else:
            del self._main[bid]

    def _scan_small(self) -> Block | None:
        small, main, freq = self._small, self._main, self._freq
        if not self._small_members:
            return None  # everything in S is in use: nothing to find (and no O(|S|) walk)
        for _ in range(len(small)):
            bid, b = next(iter(small.items()))
            if bid in self._members and freq[bid] == 0:
                return b
            del small[bid]
            if freq[bid] > 0:
                freq[bid] = 0
                main[bid] = b
                self._small_members -= bid in self._members
            else:
                small[bid] = b  # in use and unhit: stays in S, at the new end
        return None

    def _scan_main(self) -> Block | None:
        main, freq = self._main, self._freq
        for _ in range((_MAX_FREQ + 1) * len(main)):
            bid, b = next(iter(main.items()))
            if bid in self._members:
                if freq[bid] == 0:
                    return b
                freq[bid] -= 1
            main.move_to_end(bid)
        return None

    def _kvictim(self) -> Block:
        if self._chosen is not None:
            return self._chosen
        keyed = len(self._small) + len(self._main)
        if self._small and len(self._small) >= self.cfg.small_fraction * keyed:
            v = self._scan_small() or self._scan_main()
        else:
            v = self._scan_main() or self._scan_small()
        if v is None:  # S's promotions may have left the only candidates in M
            v = self._scan_main()
        assert v is not None, "s3fifo: no victim although the evictable set is not empty"
        self._chosen = v
        return v

    def _klen(self) -> int:
        return len(self._members)

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._members

    def verify(self) -> None:
        assert not (set(self._small) & set(self._main)), "a block is in both S and M"
        assert set(self._small) | set(self._main) == set(self._freq), "queues and frequencies disagree"
        assert set(self._members) <= set(self._freq), "an evictable keyed block is in no queue"
        assert self._small_members == len(set(self._members) & set(self._small)), "S member count drifted"
        super().verify()
