"""A host-memory KV tier below the GPU block pool: offload on eviction, reload over the host link.

The tier is a second `BlockPool` (host blocks, keyed like GPU blocks, ordered by their own
eviction policy: any registered one). Every host block is evictable between steps: a host block
is only ever a copy, never in use.

- Write-back (default): a keyed GPU block the GPU pool evicts is copied to the host tier (unless
  its key is there already: the copy is identical). Write-through: a GPU block is copied when it
  gets its key, and eviction copies nothing.
- A lookup continues into the host tier where the GPU prefix ends (`host_hits`).
- A waiting request with host hits is admitted *loading* (vLLM's WAITING_FOR_REMOTE_KVS): it
  takes its GPU hits and new GPU blocks for the host hits, its load is issued in this step, it
  computes nothing and is not running. Its loaded blocks get their keys only when it resumes
  (vLLM's `delay_cache_blocks`), so no request reads them before the copy is done.
- Timing: a load issued in step s runs during step s, overlapped with the step's compute (a copy
  stream beside the forward pass), and the loading request resumes in step s+1 at the front of
  the waiting queue. The step ends when both its compute and its copies are done, so a load longer
  than the step's compute stalls it (`transfer_stall_s`). Loads and stores move in opposite
  directions of a full-duplex link and overlap each other. vLLM polls instead and lets a slow
  load span several steps; the one-step rule keeps the tier's decisions independent of the clock,
  so the engine and the simulator make the same ones.
- `reload=if_faster` skips a reload slower than recomputing those tokens (cost model): the request
  is then admitted as if the host tier were empty.

Transfers are recorded as one ordered copy list per step for the executor (`StepTransfers`),
run before the step's forward pass: an evicted block leaves before the forward overwrites it,
and a load's source is read before a later store of the same step reuses it. A write-through
copy of a block keyed in step s (its KV is computed by step s) is made at the start of step s+1
(`begin_step`), before that step allocates anything, so the block still holds its KV.
"""

from __future__ import annotations

from typing import Callable

from apcsim.core.block_pool import BlockPool
from apcsim.core.request import Request
from apcsim.core.tier_values import (  # noqa: F401  (re-exported: the tier's whole vocabulary)
    RELOAD_MODES,
    WRITE_MODES,
    Copy,
    HostLink,
    HostTierConfig,
    HostTierStats,
    StepTransfers,
    TierParts,
)
from policies.types import Block


class HostTier:
    def __init__(self, cfg: HostTierConfig, pool: BlockPool, link: HostLink, block_size: int,
                 recompute_time: Callable[[int, int], float]) -> None:
        """`pool`: the host blocks with their policy; `recompute_time(tokens, context)`: the cost
        model's marginal recompute time (reload=if_faster). `cfg` is checked
        (apcsim.core.build.check_host_tier)."""
        self.cfg = cfg
        self.pool = pool
        self.link = link
        self.block_size = block_size
        self.recompute_time = recompute_time
        self.write_through = cfg.write == "through"
        self.stats = HostTierStats()
        self._copies: list[Copy] = []
        self._through: list[tuple[Block, int]] = []  # write-through: (GPU block, its key) to copy
        self._skipped: Request | None = None  # the last request whose reload `load_plan` skipped
        self._loaded = self._load_transfers = self._stored = self._store_transfers = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def has_pending_copies(self) -> bool:
        return bool(self._through or self._copies)

    @property
    def used_blocks(self) -> int:
        return len(self.pool.cached)  # every used host block holds a key, no two the same

    # -- stores --------------------------------------------------------------------------------
    def _store(self, blocks) -> int:
        """Copy keyed GPU blocks whose key the tier lacks; refresh the ones it has. Returns copies."""
        pool, n = self.pool, 0
        for b in blocks:
            key = b.key
            if key is None:
                continue
            held = pool.cached.get(key)
            if held is not None:
                pool.touch([held])  # the same content: a hit for the host policy, no copy
                pool.release([held])
                continue
            if not pool.num_free:
                continue  # every host block is the source of a load this step: the copy is dropped
            evictions = pool.num_evictions
            (h,) = pool.allocate(1)
            self.stats.host_evictions += pool.num_evictions - evictions
            pool.cache(h, key, b.depth, b.parent_key)
            pool.release([h])
            self._copies.append(Copy("store", b.block_id, h.block_id))
            n += 1
        self.stats.peak_used_blocks = max(self.stats.peak_used_blocks, self.used_blocks)
        return n

    def on_gpu_evict(self, victims) -> None:
        """The GPU pool is about to drop the keys of `victims` (write-back's copy point)."""
        n = self._store(victims)
        if n:
            self._stored += n
            self._store_transfers += 1

    def on_gpu_cache(self, blocks: list[Block]) -> None:
        """GPU blocks just got keys (write-through): copied at the start of the next step."""
        self._through.extend((b, b.key) for b in blocks)

    def begin_step(self) -> None:
        """A step's schedule starts: copy the blocks keyed since the last one (write-through).
        Nothing was allocated since, so each still holds the key and KV it was cached with."""
        if not self._through:
            return
        blocks = [b for b, key in self._through if b.key == key]
        self._through = []
        self.on_gpu_evict(blocks)

    # -- lookups and loads ---------------------------------------------------------------------
    def host_hits(self, keys: list[int], start: int, stop: int) -> list[Block]:
        """Host blocks holding keys[start:stop], from `start` up to the first miss."""
        return self.pool.cached_prefix(keys[start:stop])

    def reload_pays(self, num_gpu_hits: int, num_host_hits: int) -> bool:
        if self.cfg.reload == "always":
            return True
        bs = self.block_size
        return self.link.seconds(num_host_hits, 1) < self.recompute_time(num_host_hits * bs, num_gpu_hits * bs)

    def load_plan(self, kv, r: Request, computed: list) -> list[Block]:
        """The host blocks waiting request r would load after its GPU hits `computed` (empty: no
        host hit, or the reload policy says recompute); counts the lookup at first admission."""
        max_blocks = (r.num_tokens - 1) // self.block_size
        g = len(computed)
        if g >= max_blocks or not kv.enable_caching:
            return []
        hits = self.host_hits(kv.block_keys(r, max_blocks), g, max_blocks)
        if hits and not self.reload_pays(g, len(hits)):
            self._skipped = r
            return []
        return hits

    def admitted_without_load(self, r: Request, num_gpu_hits: int) -> None:
        """r was admitted computing whatever the GPU did not hold (no host hit, or a skipped one)."""
        if self._skipped is r:
            self.stats.reloads_skipped += 1
        self._skipped = None
        if r.num_cached_tokens < 0:
            self.count_lookup(r, num_gpu_hits, 0)

    def count_lookup(self, r: Request, num_gpu_hits: int, num_host_hits: int) -> None:
        """A first admission's lookup past the GPU prefix (vLLM counts the connector's alike)."""
        bs = self.block_size
        self.stats.external_prefix_cache_queries += r.prompt_len - num_gpu_hits * bs
        self.stats.external_prefix_cache_hits += num_host_hits * bs

    def start_load(self, kv, r: Request, computed: list, hits: list[Block]) -> bool:
        """Admit r loading: take its GPU hits, new GPU blocks for the host hits, and issue the
        copies. False (nothing changed) if the GPU pool cannot give the blocks now."""
        bs = self.block_size
        if kv.can_allocate(r, len(hits) * bs, computed) < 0:
            return False
        r.hit_memo = None
        gpu = kv.pool
        kv.take_hits(r, computed)
        r.num_cached_blocks = len(r.block_ids)  # loaded blocks get keys when r resumes
        # The sources are held while the GPU allocates: its evictions store into the host tier,
        # which must not reuse a block this load still reads.
        self.pool.touch(hits)
        targets = gpu.allocate(len(hits))
        self.pool.release(hits[::-1])  # tail first, as the GPU frees a chain
        for h, t in zip(hits, targets):
            self._copies.append(Copy("load", h.block_id, t.block_id))
        r.block_ids.extend(t.block_id for t in targets)
        r.num_computed_tokens = len(r.block_ids) * bs
        self._loaded += len(hits)
        self._load_transfers += 1
        self.stats.loads += 1
        return True

    # -- the step's copies ---------------------------------------------------------------------
    def take_transfers(self) -> StepTransfers | None:
        """The copies recorded since the last call, for this step's plan (None: none)."""
        if not self._copies:
            return None
        link = self.link
        out = StepTransfers(tuple(self._copies),
                            link.seconds(self._loaded, self._load_transfers),
                            link.seconds(self._stored, self._store_transfers, store=True))
        self.stats.blocks_loaded += self._loaded
        self.stats.blocks_offloaded += self._stored
        self._copies = []
        self._loaded = self._load_transfers = self._stored = self._store_transfers = 0
        return out

    def summary(self, gpu_queries: int, gpu_hits: int) -> dict:
        """metrics.json's `host_tier`. `gpu_queries`, `gpu_hits`: the GPU's prefix_cache_queries
        and prefix_cache_hits (tokens), for the hit rate of both tiers together."""
        s = self.stats
        bb = self.link.block_bytes
        q = s.external_prefix_cache_queries
        return {
            "num_blocks": self.num_blocks,
            "policy": self.cfg.policy,
            "write": self.cfg.write,
            "reload": self.cfg.reload,
            "external_prefix_cache_queries": q,
            "external_prefix_cache_hits": s.external_prefix_cache_hits,
            "external_prefix_cache_hit_rate": s.external_prefix_cache_hits / q if q else 0.0,
            "preempted_external_prefix_cache_hits": s.preempted_external_prefix_cache_hits,
            "combined_prefix_cache_hit_rate": (gpu_hits + s.external_prefix_cache_hits) / gpu_queries if gpu_queries else 0.0,
            "blocks_offloaded": s.blocks_offloaded,
            "blocks_loaded": s.blocks_loaded,
            "kv_offload_bytes_gpu_to_cpu": s.blocks_offloaded * bb,
            "kv_offload_bytes_cpu_to_gpu": s.blocks_loaded * bb,
            "loads": s.loads,
            "reloads_skipped": s.reloads_skipped,
            "loads_abandoned": s.loads_abandoned,
            "host_evictions": s.host_evictions,
            "used_blocks": self.used_blocks,
            "peak_used_blocks": s.peak_used_blocks,
            "occupancy": self.used_blocks / self.num_blocks,
        }

    def verify(self) -> None:
        pool = self.pool
        pool.verify()
        for b in pool.blocks:
            assert b.ref_cnt == 0, f"host {b!r} is held between steps"
        assert not self._copies, "copies recorded but not handed to a plan"
