"""Session affinity by consistent hashing: a key picks a point on a hash ring of the replicas
(`virtual_nodes` points each), and the request goes to the first replica clockwise.

`key=session`: the conversation's first request id, so every turn of a conversation lands on
the replica that served (and cached) its earlier turns. `key=prefix`: the chained key of the
prompt's first `prefix_blocks` full blocks (all of them when the prompt is shorter; the session
when it has none), so requests sharing that prefix, e.g. a system prompt, meet on one replica.
Adding or removing a replica moves only the keys of its arcs.

Observes the request's key; with the guard on, also the router's own in-flight counts.
Guard (consistent hashing with bounded loads): with `max_load_factor` > 0 a replica holding
more than max_load_factor * (mean in flight + 1) requests is skipped and the walk goes on
clockwise; 0 turns the guard off (pure affinity).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing.base import Router, RouterConfig

KEYS = ("session", "prefix")


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass
class SessionAffinityConfig(RouterConfig):
    name: str = "session_affinity"
    key: str = "session"  # session | prefix
    prefix_blocks: int = 4  # key=prefix: how many leading blocks name the prefix
    virtual_nodes: int = 64  # ring points per replica (more: a more even split of keys)
    max_load_factor: float = 0.0  # > 0: bounded-load guard (see module doc); 0: off


@register_routing("session_affinity", SessionAffinityConfig)
class SessionAffinityRouter(Router):
    """Consistent hashing on the session (or a prefix) key; observes the key (and with the
    bounded-load guard, the router's in-flight counts)."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if cfg.key not in KEYS:
            raise ValueError(f"router.key must be one of {', '.join(KEYS)}, got {cfg.key!r}")
        if cfg.prefix_blocks < 1 or cfg.virtual_nodes < 1 or cfg.max_load_factor < 0:
            raise ValueError("router.prefix_blocks and router.virtual_nodes must be >= 1, router.max_load_factor >= 0")
        points = sorted((_h64(f"replica-{r}-{v}".encode()), r)
                        for r in range(ctx.num_replicas) for v in range(cfg.virtual_nodes))
        self._ring_hash = [p for p, _ in points]
        self._ring_replica = [r for _, r in points]
        self.num_guarded = 0

    def key_of(self, request) -> int:
        if self.cfg.key == "prefix":
            keys = request.prompt_block_keys()
            if keys:
                return _h64(str(keys[min(self.cfg.prefix_blocks, len(keys)) - 1]).encode())
        return _h64(request.session_id.encode())

    def route(self, request, replicas) -> int:
        start = bisect.bisect_left(self._ring_hash, self.key_of(request)) % len(self._ring_hash)
        first = self._ring_replica[start]
        if self.cfg.max_load_factor <= 0:
            return first
        cap = self.cfg.max_load_factor * (sum(r.requests_in_flight for r in replicas) / len(replicas) + 1)
        n = len(self._ring_hash)
        for step in range(n):
            k = self._ring_replica[(start + step) % n]
            if replicas[k].requests_in_flight < cap:
                if k != first:
                    self.num_guarded += 1
                return k
        return first  # every replica is over the bound (cannot happen with factor >= 1)

    def stats(self) -> dict:
        return {"guard_redirects": self.num_guarded} if self.cfg.max_load_factor > 0 else {}
