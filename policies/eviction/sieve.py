"""SIEVE (Zhang et al., NSDI'24): a FIFO queue with one "visited" bit and a moving hand.

Every keyed block joins the queue's new end when it is cached, and a hit only sets its visited
bit; nothing moves on a hit. To evict, the hand walks from where it stopped toward newer blocks
(wrapping to the oldest): a visited block gets its bit cleared and is passed, an unvisited
evictable one is the victim. Adaptation to a KV pool: blocks in use stay in the queue (their
position is their cache age) and the hand passes them without clearing their bit, since they
cannot be evicted. Prefix dependence is not used: a chain is cached head first, so its parent
is older and, unless hit, goes before its children (which then wait, unreachable, for the hand).
Keyless blocks go first (see `_keyless`).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class SieveConfig(EvictionConfig):
    name: str = "sieve"


@register_eviction("sieve", SieveConfig)
class SievePolicy(KeylessFirstPolicy):
    uses_tree = False
    uses_depth = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        # A doubly linked list of every keyed block (in use or not), oldest at `_tail`;
        # `_newer[b]` / `_older[b]` are its neighbours (None at the ends).
        self._newer: dict[int, int | None] = {}
        self._older: dict[int, int | None] = {}
        self._tail: int | None = None
        self._head: int | None = None
        self._visited: set[int] = set()
        self._members: dict[int, Block] = {}  # evictable keyed blocks
        self._hand: int | None = None

    def on_insert(self, block: Block) -> None:
        bid = block.block_id
        self._older[bid], self._newer[bid] = self._head, None
        if self._head is not None:
            self._newer[self._head] = bid
        self._head = bid
        if self._tail is None:
            self._tail = bid
        self._visited.discard(bid)

    def on_hit(self, block: Block) -> None:
        self._visited.add(block.block_id)

    def _unlink(self, bid: int) -> None:
        newer, older = self._newer.pop(bid), self._older.pop(bid)
        if newer is None:
            self._head = older
        else:
            self._older[newer] = older
        if older is None:
            self._tail = newer
        else:
            self._newer[older] = newer
        if self._hand == bid:
            self._hand = newer  # SIEVE: the hand moves on toward newer blocks (None: wrap)
        self._visited.discard(bid)

    def _kadd(self, block: Block) -> None:
        self._members[block.block_id] = block

    def _kremove(self, block: Block, evicted: bool) -> None:
        del self._members[block.block_id]
        if evicted:
            self._unlink(block.block_id)

    def _kvictim(self) -> Block:
        # Terminates: some member is evictable; the first lap clears the bits of those passed.
        node = self._hand if self._hand is not None else self._tail
        while True:
            b = self._members.get(node)
            if b is not None:
                if node not in self._visited:
                    self._hand = node
                    return b
                self._visited.discard(node)
            nxt = self._newer[node]
            node = nxt if nxt is not None else self._tail

    def _klen(self) -> int:
        return len(self._members)

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._members

    def verify(self) -> None:
        super().verify()
        assert set(self._members) <= set(self._newer), "an evictable keyed block is not in the queue"
        n, node = 0, self._tail
        while node is not None:
            n += 1
            node = self._newer[node]
        assert n == len(self._newer), "the SIEVE queue's links are broken"
