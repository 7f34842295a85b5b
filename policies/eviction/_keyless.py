"""A base for policies that order only keyed blocks and reuse keyless ones first.

A released block without a key (a partial block, or one whose request never filled it) holds
nothing reusable, so taking it costs no hit; every policy built on this base hands those out
first, in release order, and orders the keyed ones itself through the `_k*` hooks below.
"""

from __future__ import annotations

import abc

from policies.eviction.base import EvictionPolicy
from policies.types import Block


class KeylessFirstPolicy(EvictionPolicy):
    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._keyless: dict[int, Block] = {}  # insertion-ordered: release order

    # -- what subclasses implement, over the evictable blocks that have a key ---------------------
    @abc.abstractmethod
    def _kadd(self, block: Block) -> None:
        """A keyed block entered the evictable set."""

    @abc.abstractmethod
    def _kremove(self, block: Block, evicted: bool) -> None:
        """A keyed member left the set: evicted (its key goes next) or taken by a hit."""

    @abc.abstractmethod
    def _kvictim(self) -> Block:
        """The keyed member to evict next (there is at least one)."""

    @abc.abstractmethod
    def _klen(self) -> int: ...

    @abc.abstractmethod
    def _kcontains(self, block: Block) -> bool: ...

    # -- the contract ------------------------------------------------------------------------------
    def on_release(self, block: Block) -> None:
        if block.key is None:
            self._keyless[block.block_id] = block
        else:
            self._kadd(block)

    def on_acquire(self, block: Block) -> None:
        self._kremove(block, False)  # a hit: the block has a key

    def on_evict(self, block: Block) -> None:
        if self._keyless.pop(block.block_id, None) is None:
            self._kremove(block, True)

    def victim(self) -> Block:
        if self._keyless:
            return next(iter(self._keyless.values()))
        return self._kvictim()

    def __len__(self) -> int:
        return len(self._keyless) + self._klen()

    def __contains__(self, block: Block) -> bool:
        return block.block_id in self._keyless or self._kcontains(block)

    def verify(self) -> None:
        # victim() is not called here: for SIEVE and S3-FIFO it moves the hand or the queues, and
        # a run with verify=true must evict exactly as one without.
        for bid, b in self._keyless.items():
            assert b.key is None and b.ref_cnt == 0, f"keyless list holds {b!r}"
