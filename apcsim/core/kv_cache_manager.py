"""Request-level verbs over the block pool: find a request's cached prefix, allocate slots for
the tokens it will compute, cache its full blocks, free it. vLLM V1's KVCacheManager semantics.

Block keys chain: key(i) = H(key(i-1), tokens of block i) (by default xxh3_64 with the parent
key as seed; see `block_hash` for the choices), and the chain starts from a seed derived from the
request's cache salt, so equal keys mean equal whole prefixes (and equal tenants). Only full
blocks get keys. With `verify_tokens`, each cached block also keeps its salt and token ids, and
a lookup accepts a key match only if they are equal too (a mismatch is a hash collision: a miss).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from operator import attrgetter, countOf

import numpy as np
import xxhash

from apcsim.mathutil import cdiv
from apcsim.core.block_hash import HashAlgo, get_hash_algo
from apcsim.core.block_pool import BlockPool
from apcsim.core.content_ids import ContentChain, content_keys
from apcsim.core.request import UNSEEN_PREFIX, Request, RequestSpec
from policies.eviction.base import EvictionPolicy
from policies.types import BlockRun


_ref_cnt = attrgetter("ref_cnt")
_block_id = attrgetter("block_id")


@lru_cache(maxsize=None)
def _block_bytes(block_size: int) -> struct.Struct:
    """One block of int32 tokens as one bytes field: `iter_unpack` yields the blocks of a buffer."""
    return struct.Struct(f"{block_size * 4}s")


def chain_keys(tokens, block_size: int, seed: int, algo: HashAlgo | None = None) -> list[int]:
    """Keys of the full blocks of `tokens` (int32), chained from `seed` with `algo` (default
    xxh3_64): the one key function (the KV cache manager and the offline future oracle both call
    it)."""
    # int32 [full blocks * block_size], cut into each block's bytes by one C iterator (a third
    # faster than slicing the bytes in Python, and no copy of the whole prompt first)
    full = np.ascontiguousarray(tokens[: len(tokens) // block_size * block_size], dtype="<i4")
    blocks = _block_bytes(block_size).iter_unpack(full)
    out = []
    append = out.append
    if algo is None or algo.name == "xxh3_64":  # inlined: the hot path of every run
        h = xxhash.xxh3_64_intdigest
        for (block,) in blocks:
            seed = h(block, seed)
            append(seed)
        return out
    hstep = algo.step
    for (block,) in blocks:
        seed = hstep(seed, block)
        append(seed)
    return out


def uses_content_keys(algo: HashAlgo, verify_tokens: bool, requested: bool = True) -> bool:
    """Content-id keys are 64-bit and never read tokens: they stand in for xxh3_64 token keys only.
    Another hash algorithm (chosen for its collision odds) and verify_tokens hash tokens."""
    return requested and algo.name == "xxh3_64" and not verify_tokens


def prompt_keys(spec: RequestSpec, num_blocks: int, block_size: int, algo: HashAlgo, content: bool) -> list[int]:
    """Keys of the first `num_blocks` full blocks of a spec's prompt, exactly as the manager keys
    them (the future oracle's key function); `content`: `uses_content_keys` of the manager."""
    seed = algo.root(spec.cache_salt)
    keys = content_keys(spec.content_ids, block_size, seed)[:num_blocks] if content and spec.content_ids is not None else []
    if len(keys) < num_blocks:
        tokens = spec.prompt_token_ids[len(keys) * block_size : num_blocks * block_size]
        keys.extend(chain_keys(tokens, block_size, keys[-1] if keys else seed, algo))
    return keys


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int, *, hash_algo: str | HashAlgo = "xxh3_64",
                 verify_tokens: bool = False, content_keys: bool = True) -> None:
        self.pool = pool
        self.block_size = block_size
        self.enable_caching = pool.policy.enables_caching
        self._policy_before_release = type(pool.policy).before_release is not EvictionPolicy.before_release
        self.hash_algo = hash_algo if isinstance(hash_algo, HashAlgo) else get_hash_algo(hash_algo)
        self.verify_tokens = verify_tokens
        # Key blocks of prompts named by content ids from the ids (content_ids.py), not tokens.
        self.use_content_keys = uses_content_keys(self.hash_algo, verify_tokens, content_keys)
        # verify_tokens: block id -> (salt, token bytes) of what it was cached with. Set only
        # when enabled (it costs block_size * 4 bytes a block); a cached block's entry is always
        # its latest content, since a block is re-keyed only by caching it again.
        self._content: dict[int, tuple[str | None, bytes]] = {}
        # The host tier's write-through hook (apcsim.core.host_tier): called with blocks that
        # just got their keys. None unless cpu_tier.write=through.
        self.on_cached = None
        # How `allocate_slots` keys a request's full blocks: at once, or through the scheduler's
        # pending keys (apcsim.core.pending_keys), which may make them later.
        self.key_blocks = self.cache_full_blocks

    # -- keys ----------------------------------------------------------------------------------
    def block_keys(self, req: Request, num_blocks: int) -> list[int]:
        """The keys of (at least) the request's first `num_blocks` full blocks, computed once and
        kept: a prompt named by content ids gets its content keys from the ids as far as asked
        (`Request.content_chain`), blocks past them token keys chained from the last; a fixed
        output stream (`Request.outputs_fixed`) is keyed to its end on the first call that
        reaches it."""
        keys = req.block_keys
        if len(keys) < num_blocks:
            bs = self.block_size
            chain = req.content_chain
            if not keys:
                seed = self.hash_algo.root(req.spec.cache_salt)
                if chain is None and self.use_content_keys and req.spec.content_ids is not None:
                    chain = req.content_chain = ContentChain(req.spec.content_ids, bs, seed)
            if chain is not None and len(keys) < chain.num_blocks:
                keys.extend(chain.keys(len(keys), num_blocks))
                if len(keys) >= num_blocks:
                    return keys
            start = len(keys)
            seed = keys[-1] if keys else seed
            stop = num_blocks
            if num_blocks * bs > req.prompt_len and req.outputs_fixed:
                # Into the output, whose tokens are all known already: key every block the output
                # will fill in one pass, not one call per decode block boundary.
                stop = max(num_blocks, (req.prompt_len + req.max_output_tokens) // bs)
            keys.extend(chain_keys(req.token_slice(start * bs, stop * bs), bs, seed, self.hash_algo))
        return keys

    def _block_content(self, req: Request, i: int) -> tuple[str | None, bytes]:
        bs = self.block_size
        return req.spec.cache_salt, req.token_slice(i * bs, (i + 1) * bs).tobytes()

    # -- the verbs -----------------------------------------------------------------------------
    def get_computed_blocks(self, req: Request) -> list:
        """The longest cached prefix of the request's tokens, in blocks (nothing is taken yet).

        At least the last token is always computed, so only blocks entirely within the first
        num_tokens - 1 tokens can hit.
        """
        if not self.enable_caching:
            return []
        max_blocks = (req.num_tokens - 1) // self.block_size
        if max_blocks == 0:
            return []
        memo = req.hit_memo
        if memo is UNSEEN_PREFIX and not self.verify_tokens:
            return []  # its first key is its own, and it holds no block yet (a trace row's prompt)
        pool = self.pool
        # An eviction cannot shorten an empty prefix: a walk that found nothing stands through
        # evictions too, until an insert (a waiting head that misses, looked up every stretch
        # while decode blocks evict). Not with verify_tokens, whose walk also says whether it
        # stopped at a collision (`lookup_collided`), which an eviction may end.
        if memo is not None and (memo[0] == pool.num_evictions or not (memo[2] or self.verify_tokens)):
            hits = memo[2][:max_blocks]  # max_blocks only grows; the slice is a no-op copy
            if memo[1] == pool.num_inserts and (len(hits) < memo[3] or len(hits) == max_blocks):
                # Nothing entered the key map since that walk either (a hit stays one while
                # nothing is evicted, a miss while nothing is inserted), and it stopped at a miss
                # or went as far as now: it stands.
                return list(hits)
        else:
            hits = []
        if len(hits) < max_blocks:
            if self.verify_tokens:
                keys = self.block_keys(req, max_blocks)
                req.lookup_collided = self._verified_walk(req, keys, hits, max_blocks)
            else:
                self._walk(req, hits, max_blocks)
        req.hit_memo = (pool.num_evictions, pool.num_inserts, hits, max_blocks)
        return list(hits)

    def _walk(self, req: Request, hits: list, max_blocks: int) -> None:
        """Extend `hits` while the request's next key is cached, making keys as the walk needs
        them: the first alone (a prompt of its own misses there), then all."""
        keys = req.block_keys
        n = len(hits)
        if len(keys) <= n:
            keys = self.block_keys(req, max_blocks if n else 1)
        found = self.pool.cached_prefix(keys[n:max_blocks])
        hits.extend(found)
        n += len(found)
        if n == len(keys) < max_blocks:  # walked past the keys made so far: make the rest
            hits.extend(self.pool.cached_prefix(self.block_keys(req, max_blocks)[n:max_blocks]))

    def _verified_walk(self, req: Request, keys: list[int], hits: list, max_blocks: int) -> bool:
        """Extend `hits` while the key is cached AND the block holds this request's salt and
        tokens; True if it stopped at a key match whose content differs (a hash collision)."""
        cached, content = self.pool.cached, self._content
        for i in range(len(hits), max_blocks):
            b = cached.get(keys[i])
            if b is None:
                return False
            if content.get(b.block_id) != self._block_content(req, i):
                return True
            hits.append(b)
        return False

    def can_allocate(self, req: Request, num_new_tokens: int, computed: list) -> int:
        """How many new blocks the request needs, or -1 if the pool cannot give them now."""
        total = req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        need = cdiv(total, self.block_size) - len(req.block_ids) - len(computed)
        evictable_hits = countOf(map(_ref_cnt, computed), 0)  # taking them shrinks the free set
        return need if need <= self.pool.num_free - evictable_hits else -1

    def allocate_slots(self, req: Request, num_new_tokens: int, computed: list | None = None) -> bool:
        """Take the hit blocks and enough new blocks for `num_new_tokens` more tokens; False (and
        nothing changed) if the pool cannot. Full blocks are cached right away, as vLLM does at
        schedule time, so a request scheduled later in the same step already hits them."""
        if not computed:  # running requests and admissions without a hit: can_allocate inlined
            bs = self.block_size
            total = req.num_computed_tokens + num_new_tokens
            need = -(-total // bs) - len(req.block_ids)
            if need > self.pool.num_free:
                return False
            req.hit_memo = None
            if need > 0:
                req.block_ids += self.pool.allocate_ids(need)
            full = min(total, req.num_tokens)
            if full // bs > req.num_cached_blocks:
                self.key_blocks(req, full)
            return True
        need = self.can_allocate(req, num_new_tokens, computed)
        if need < 0:
            return False
        req.hit_memo = None  # admitted: the lookup is spent
        self.take_hits(req, computed)
        if need > 0:
            req.block_ids += self.pool.allocate_ids(need)
        self.key_blocks(req, min(req.num_computed_tokens + num_new_tokens, req.num_tokens))
        return True

    def take_hits(self, req: Request, computed: list) -> None:
        """The request takes the cached blocks of its prefix hit (from `get_computed_blocks`):
        they join its table as computed and keyed blocks."""
        if computed:
            self.pool.touch(computed)
            req.block_ids.extend(map(_block_id, computed))
            req.num_computed_tokens += len(computed) * self.block_size
            req.num_cached_blocks = len(req.block_ids)

    def append_decode_blocks(self, reqs: list[Request]) -> None:
        """One new block for each request whose next token starts a block (a decode at a block
        boundary; the caller made sure the pool has them): `allocate_slots(r, 1)` for each in
        turn, in one pool call (the pool hands out and evicts blocks in the same order either way,
        by the eviction policy's contract; nothing is keyed, the new blocks are empty)."""
        for r, i in zip(reqs, self.pool.allocate_ids(len(reqs))):
            r.block_ids.append(i)

    def cache_full_blocks(self, req: Request, num_tokens: int) -> None:
        """Give keys to the request's blocks that are full within its first `num_tokens` tokens."""
        if not self.enable_caching:
            return
        num_full = num_tokens // self.block_size
        first = req.num_cached_blocks
        if num_full <= first:
            return
        keys = self.block_keys(req, num_full)
        ids = req.block_ids[first:num_full]
        self.pool.cache_chain_ids(ids, keys, first)
        if self.on_cached is not None:
            self.on_cached(list(map(self.pool.blocks.__getitem__, ids)))
        if self.verify_tokens:
            for i in range(first, num_full):
                self._content[req.block_ids[i]] = self._block_content(req, i)
        req.num_cached_blocks = num_full

    def free(self, req: Request, parked: tuple[int, int] | None = None) -> BlockRun | None:
        """Release the request's blocks, tail first, so the tail is evicted before the head.
        `parked` (first, stop): blocks [first, stop) are a parked range of pending keys
        (apcsim.core.pending_keys), held by this request alone, that enter the free queue
        without a key, as one run (returned)."""
        if self._policy_before_release:
            self.pool.policy.before_release(req)
        run = None
        if parked is None:
            self.pool.release_ids(reversed(req.block_ids))
        else:
            # The same order in three parts: tail, pending range, head. Only the tail can hold
            # keyless blocks (`defer` keyed [0, first) before the range existed), so the keyless
            # free stack gets them in the same order; nobody else holds a range block (it has no
            # key: no lookup can reach it), so its last reference is this request's.
            first, stop = parked
            ids = req.block_ids
            self.pool.release_ids(reversed(ids[stop:]))
            run = self.pool.release_parked(ids[first:stop][::-1])
            self.pool.release_ids(reversed(ids[:first]))
        req.block_ids = []
        req.num_cached_blocks = 0
        return run
