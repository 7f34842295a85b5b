"""The host KV tier's config and the plain values it hands out: its copies, their link model,
its counters, and the parts `apcsim.core.build` assembles it from (see apcsim.core.host_tier)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

WRITE_MODES = ("back", "through")
RELOAD_MODES = ("always", "if_faster")


@dataclass
class HostTierConfig:
    """`cpu_tier` in the config. Off unless num_blocks > 0 or gib is set."""

    num_blocks: int = 0  # host blocks (each the size of a GPU block)
    gib: Optional[float] = None  # or a size: the blocks of that many GiB (overrides num_blocks)
    policy: str = "lru"  # the host tier's eviction policy: any registered name (its default config)
    write: str = "back"  # back: copy on GPU eviction; through: copy when a block is cached
    reload: str = "always"  # always | if_faster: skip reloads slower than recomputing
    # Also replay the requests through one timing-free cache of the GPU's and of the GPU's plus
    # the host's capacity (LRU and Belady; apcsim/cluster/bound.py): metrics.json host_tier.bound.
    bound: bool = False
    # A measured link (`python -m engine.host_link`): its fit replaces the hardware preset's
    # host_link_bw_gbps / host_link_latency_us, per direction.
    link_profile: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.num_blocks > 0 or self.gib is not None


@dataclass(frozen=True)
class Copy:
    """One block copied: `store` GPU block src -> host block dst; `load` host src -> GPU dst."""

    kind: str
    src: int
    dst: int


@dataclass(frozen=True)
class StepTransfers:
    """The host-link copies of one step, in the order they must run, and their modelled time."""

    copies: tuple[Copy, ...]  # in order, before the forward pass
    load_s: float  # host -> GPU
    store_s: float  # GPU -> host

    @property
    def seconds(self) -> float:
        return max(self.load_s, self.store_s)  # full duplex: the two directions overlap


@dataclass
class HostTierStats:
    # vLLM's connector prefix-cache counters (tokens): prompt tokens looked up past the GPU's
    # prefix at first admission, and those found on the host.
    external_prefix_cache_queries: int = 0
    external_prefix_cache_hits: int = 0
    preempted_external_prefix_cache_hits: int = 0  # host hits of re-admitted (preempted) requests
    blocks_offloaded: int = 0  # GPU -> host copies
    blocks_loaded: int = 0  # host -> GPU copies
    loads: int = 0  # requests admitted loading
    reloads_skipped: int = 0  # host hits recomputed instead (reload=if_faster)
    loads_abandoned: int = 0  # loaded requests that gave their blocks back (deadlock, see Scheduler)
    host_evictions: int = 0
    peak_used_blocks: int = 0


@dataclass
class HostLink:
    """The host <-> GPU link: bytes / bandwidth plus a fixed cost per transfer. `bw_gbps` and
    `latency_us` are the load direction's (host -> GPU), and the store direction's too unless
    `store_bw_gbps` / `store_latency_us` are given (a measured link)."""

    bw_gbps: float
    latency_us: float
    block_bytes: int
    store_bw_gbps: Optional[float] = None
    store_latency_us: Optional[float] = None

    def seconds(self, num_blocks: int, num_transfers: int, *, store: bool = False) -> float:
        if num_blocks == 0:
            return 0.0
        bw, lat = self.bw_gbps, self.latency_us
        if store and self.store_bw_gbps is not None:
            bw, lat = self.store_bw_gbps, self.store_latency_us
        return num_transfers * lat * 1e-6 + num_blocks * self.block_bytes / (bw * 1e9)


@dataclass
class TierParts:
    """What `apcsim.core.build` needs to make a tier besides the policy: sizes and the link."""

    cfg: HostTierConfig
    num_blocks: int
    link: HostLink
    recompute_time: Callable[[int, int], float] = field(repr=False, default=lambda n, c: 0.0)
