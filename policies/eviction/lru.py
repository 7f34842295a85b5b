"""LRU in vLLM V1's exact order.

vLLM keeps one free queue: a request's blocks are appended when freed, in reverse order (its
chain's tail first), and allocation pops from the head. So among blocks released together the
tail is reused before the head, and a hit takes a block out of the queue.

The queue is a list in release order, consumed from a head index, so a release is one `extend`
and taking the n oldest is one slice: no per-block queue node. A hit cannot cut an entry out of
the middle of a list cheaply, so it leaves a hole: `_pos` maps each queued block to the absolute
position of its live entry, and `_holes` (a min-heap) holds the positions of entries that hits
killed. Eviction slices between holes. Invariant: every hole lies at or after the head, the live
entries are exactly the positions >= head that are not holes, and `_pos` is exact for live
blocks (entries of blocks already evicted may linger until they are queued again; they point
before the head).
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush
from operator import attrgetter

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.registry import register_eviction
from policies.types import Block

_block_id = attrgetter("block_id")
_COMPACT_AT = 4096  # drop the consumed prefix of the list once it is this long and half the list


@dataclass
class LRUConfig(EvictionConfig):
    name: str = "lru"


@register_eviction("lru", LRUConfig)
class LRUPolicy(EvictionPolicy):
    uses_tree = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._q: list[Block] = []  # release order; entries before _head are gone
        self._head = 0  # index in _q of the oldest entry not yet consumed
        self._base = 0  # absolute position of _q[0] (the list is compacted from the front)
        self._pos: dict[int, int] = {}  # block id -> absolute position of its live entry
        self._holes: list[int] = []  # heap: absolute positions of entries killed by hits
        self._n = 0  # live entries

    def on_release(self, block: Block) -> None:
        self._pos[block.block_id] = self._base + len(self._q)
        self._q.append(block)
        self._n += 1

    def on_release_many(self, blocks: list[Block]) -> None:
        end = self._base + len(self._q)
        self._pos.update(zip(map(_block_id, blocks), range(end, end + len(blocks))))
        self._q.extend(blocks)
        self._n += len(blocks)

    def on_acquire(self, block: Block) -> None:
        heappush(self._holes, self._pos.pop(block.block_id))
        self._n -= 1
        if len(self._holes) >= _COMPACT_AT and len(self._holes) >= self._n:
            self._compact()  # hits without evictions: holes would pile up

    def _compact(self) -> None:
        """Rebuild the list from the live entries, at fresh positions after every old one (so
        lingering `_pos` entries of evicted blocks still point before the head)."""
        q, holes, base = self._q, set(self._holes), self._base
        live = [q[i] for i in range(self._head, len(q)) if base + i not in holes]
        self._base = new_base = base + len(q)
        self._q, self._head, self._holes = live, 0, []
        self._pos.update(zip(map(_block_id, live), range(new_base, new_base + len(live))))

    def _skip_holes(self) -> int:
        """Advance the head past dead entries; returns it."""
        holes, i = self._holes, self._head
        while holes and holes[0] == self._base + i:
            heappop(holes)
            i += 1
        self._head = i
        return i

    def victim(self) -> Block:
        if not self._n:
            raise IndexError("victim() of an empty LRU queue")
        return self._q[self._skip_holes()]

    def on_evict(self, block: Block) -> None:
        p = self._pos.pop(block.block_id)
        if p == self._base + self._skip_holes():
            self._head += 1
        else:  # not the head (the contract evicts victim(), but stay exact if not)
            heappush(self._holes, p)
        self._n -= 1

    def evict(self, n: int) -> list[Block]:
        if n > self._n:
            raise IndexError(f"evict({n}) from an LRU queue of {self._n}")
        q, holes, base = self._q, self._holes, self._base
        i = self._head
        if not holes or holes[0] >= base + i + n:  # no hole among the next n: one slice
            out = q[i : i + n]
            i += n
        else:
            out = []
            need = n
            while need:
                if holes and holes[0] == base + i:
                    heappop(holes)
                    i += 1
                    continue
                stop = min(i + need, holes[0] - base if holes else len(q))
                out += q[i:stop]
                need -= stop - i
                i = stop
        self._n -= n
        if i >= _COMPACT_AT and 2 * i >= len(q):
            del q[:i]
            self._base = base + i
            i = 0
        self._head = i
        return out  # oldest first

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: Block) -> bool:
        p = self._pos.get(block.block_id)
        return p is not None and p >= self._base + self._head and p not in self._holes

    def verify(self) -> None:
        holes = set(self._holes)
        assert len(holes) == len(self._holes), "a hole twice in the LRU heap"
        assert all(p >= self._base + self._head for p in holes), "an LRU hole before the head"
        live = 0
        for i in range(self._head, len(self._q)):
            p = self._base + i
            if p in holes:
                continue
            blk = self._q[i]
            assert self._pos.get(blk.block_id) == p and blk.ref_cnt == 0, f"LRU queue holds {blk!r} at {p}"
            live += 1
        assert live == self._n, f"LRU queue counts {self._n} live entries, holds {live}"
