"""LRU in vLLM V1's exact order.

vLLM keeps one free queue: a request's blocks are appended when freed, in reverse order (its
chain's tail first), and allocation pops from the head. So among blocks released together the
tail is reused before the head, and a hit takes a block out of the queue.

The queue is a list in release order, consumed from a head index, so a release is one `extend`
(no per-block write at all) and taking the n oldest is one slice. A hit cannot cut an entry out
of the middle of a list cheaply, and finding it would need a per-block position written at every
release, so a hit only counts the block in `_dead` instead: its entry stays and is skipped when
the head reaches it. Invariant: a block's entries at or after the head are first its dead ones
(`_dead[block]` of them), then at most one live one, since a hit always kills the block's
latest entry and a release appends a new one after every older one. So the first entry of a block
with a dead count is always dead. `_n` counts the live entries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.registry import register_eviction
from policies.types import Block

_COMPACT_AT = 4096  # drop the consumed prefix (or the dead entries) once this many and half the list


@dataclass
class LRUConfig(EvictionConfig):
    name: str = "lru"


@register_eviction("lru", LRUConfig)
class LRUPolicy(EvictionPolicy):
    uses_tree = False
    uses_depth = False
    plain_free_queue = True

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._q: list[Block] = []  # release order; entries before _head are gone
        self._head = 0  # index in _q of the oldest entry not yet consumed
        self._dead: dict[Block, int] = {}  # block -> entries of it at or after the head killed by hits
        self._n = 0  # live entries
        self._removed = 0  # live entries ever removed (evicted or killed)
        self._compactions = 0
        self._members: tuple | None = None  # (_version(), ids of live blocks), for __contains__

    def on_release(self, block: Block) -> None:
        self._q.append(block)
        self._n += 1

    def on_release_many(self, blocks: list[Block]) -> None:
        self._q.extend(blocks)
        self._n += len(blocks)

    def _kill(self, block: Block) -> None:
        """The block's live entry (its latest) leaves the queue where it stands."""
        self._dead[block] = self._dead.get(block, 0) + 1
        self._n -= 1
        self._removed += 1
        dead = len(self._q) - self._head - self._n
        if dead >= _COMPACT_AT and dead >= self._n:
            self._compact()  # hits without evictions: dead entries would pile up

    def on_acquire(self, block: Block) -> None:
        self._kill(block)

    def _compact(self) -> None:
        """Rebuild the list from the live entries alone."""
        self._q = self._live()
        self._head = 0
        self._dead = {}
        self._compactions += 1

    def _live(self) -> list[Block]:
        """The live entries from the head on, in order (skipping each block's dead ones first)."""
        dead = dict(self._dead)
        live = []
        for b in self._q[self._head :]:
            k = dead.get(b)
            if k:
                dead[b] = k - 1
            else:
                live.append(b)
        return live

    def _skip_dead(self) -> int:
        """Advance the head past dead entries; returns it."""
        dead, q, i = self._dead, self._q, self._head
        while dead:
            b = q[i]
            k = dead.get(b)
            if not k:
                break
            if k == 1:
                del dead[b]
            else:
                dead[b] = k - 1
            i += 1
        self._head = i
        return i

    def victim(self) -> Block:
        if not self._n:
            raise IndexError("victim() of an empty LRU queue")
        return self._q[self._skip_dead()]

    def on_evict(self, block: Block) -> None:
        i = self._skip_dead()
        if i < len(self._q) and self._q[i] is block:
            self._head = i + 1
            self._n -= 1
            self._removed += 1
        else:  # not the head (the contract evicts victim(), but stay exact if not)
            self._kill(block)

    def evict(self, n: int) -> list[Block]:
        if n > self._n:
            raise IndexError(f"evict({n}) from an LRU queue of {self._n}")
        q, dead = self._q, self._dead
        i = self._head
        out = q[i : i + n]
        if dead and not dead.keys().isdisjoint(out):  # dead entries among the next n: walk them
            out = []
            while len(out) < n:
                b = q[i]
                k = dead.get(b)
                if not k:
                    out.append(b)
                elif k == 1:
                    del dead[b]
                else:
                    dead[b] = k - 1
                i += 1
        else:
            i += n
        self._n -= n
        self._removed += n
        if i >= _COMPACT_AT and 2 * i >= len(q):
            del q[:i]
            i = 0
        self._head = i
        return out  # oldest first

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: Block) -> bool:
        """Whether the block has a live entry (for checks, not the hot path: the live set is
        rebuilt by a scan after any change to the queue)."""
        if self._members is None or self._members[0] != self._version():
            self._members = (self._version(), set(map(id, self._live())))
        return id(block) in self._members[1]

    def _version(self) -> tuple[int, int]:
        """Changes whenever the live set does: entries ever appended (_n + _removed) and ever
        removed only grow."""
        return self._n, self._removed

    def verify(self) -> None:
        held = Counter(map(id, self._q[self._head :]))
        for b, k in self._dead.items():
            assert k > 0 and held[id(b)] >= k, f"LRU counts {k} dead entries of {b!r}, holds {held[id(b)]}"
        live = self._live()
        assert len(live) == self._n, f"LRU queue counts {self._n} live entries, holds {len(live)}"
        assert len({id(b) for b in live}) == len(live), "a block live twice in the LRU queue"
        assert all(b.ref_cnt == 0 for b in live), "LRU queue holds a block in use"
