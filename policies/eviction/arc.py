"""ARC (Megiddo & Modha, FAST'03): recency list T1 and frequency list T2, each with a ghost list
(B1, B2) of recently evicted keys, and a target size p for T1 that adapts to the workload.

A block cached for the first time is in T1; a hit moves it to T2. A key re-cached while in B1
means T1 was too small: p grows by max(1, |B2|/|B1|) and the block goes to T2; in B2, p shrinks
by max(1, |B1|/|B2|). The victim is T1's least recently released evictable block when T1 holds
more than p blocks (or T2 has no evictable block), else T2's. Adaptation to a KV pool: list
sizes count every keyed block of the list, in use or not, but only evictable blocks are ordered
(by release, as vLLM's LRU queue); ghosts hold at most num_blocks keys each. Prefix dependence
is not used: a chain released together goes tail first within its list (release order, like
LRU), and a hit prefix moves to T2 together with its hit blocks. Keyless blocks go first (see
`_keyless`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class ARCConfig(EvictionConfig):
    name: str = "arc"


@register_eviction("arc", ARCConfig)
class ARCPolicy(KeylessFirstPolicy):
    uses_tree = False
    uses_depth = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.p = 0.0  # target number of T1 blocks
        self._list: dict[int, int] = {}  # keyed block_id -> 1 (T1) or 2 (T2)
        self._size = [0, 0, 0]  # keyed blocks per list, in use or not
        self._queues = (None, OrderedDict(), OrderedDict())  # evictable members, LRU first
        self._ghosts = (None, OrderedDict(), OrderedDict())  # B1, B2: evicted keys, oldest first

    def _set_list(self, bid: int, which: int) -> None:
        old = self._list.get(bid)
        if old:
            self._size[old] -= 1
        self._list[bid] = which
        self._size[which] += 1

    def on_insert(self, block: Block) -> None:
        b1, b2 = self._ghosts[1], self._ghosts[2]
        key = block.key
        if key in b1:
            self.p = min(float(self.ctx.num_blocks), self.p + max(1.0, len(b2) / len(b1)))
            del b1[key]
            self._set_list(block.block_id, 2)
        elif key in b2:
            self.p = max(0.0, self.p - max(1.0, len(b1) / len(b2)))
            del b2[key]
            self._set_list(block.block_id, 2)
        else:
            self._set_list(block.block_id, 1)

    def on_hit(self, block: Block) -> None:
        self._set_list(block.block_id, 2)

    def _kadd(self, block: Block) -> None:
        self._queues[self._list[block.block_id]][block.block_id] = block

    def _kremove(self, block: Block, evicted: bool) -> None:
        bid = block.block_id
        which = self._list[bid]
        del self._queues[which][bid]
        if evicted:
            del self._list[bid]
            self._size[which] -= 1
            ghost = self._ghosts[which]
            ghost[block.key] = None
            while len(ghost) > self.ctx.num_blocks:
                ghost.popitem(last=False)

    def _kvictim(self) -> Block:
        t1, t2 = self._queues[1], self._queues[2]
        q = t1 if t1 and (self._size[1] > self.p or not t2) else t2
        return next(iter(q.values()))

    def _klen(self) -> int:
        return len(self._queues[1]) + len(self._queues[2])

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._queues[1] or block.block_id in self._queues[2]

    def verify(self) -> None:
        super().verify()
        for which in (1, 2):
            assert self._size[which] == sum(1 for w in self._list.values() if w == which), f"T{which} size drifted"
            for bid, b in self._queues[which].items():
                assert self._list[bid] == which and b.ref_cnt == 0 and b.key is not None, f"T{which} holds {b!r}"
        if self._klen():
            assert self._kvictim() in self
