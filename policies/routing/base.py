"""The routing-policy contract: which replica of a cluster serves a request.

The cluster (`apcsim.cluster`) asks its router once per request, as the request reaches the
cluster: every arrival and every follow-up turn of a conversation, each decided afresh (a
session-affine router is what keeps a conversation on one replica). `route(request, replicas)`
returns a replica's index; `replicas[i]` are read-only views (`ReplicaState`), and a router
reads only what its docstring says it may: a production router that infers cache contents from
its own past decisions cannot see the replicas' caches, one that learns them from KV events can.

Routers are pure Python and do not import the simulator: requests and replicas are duck-typed
(`RoutedRequest`, `ReplicaState`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass
class RouterConfig:
    name: str = "?"


class RoutedRequest(Protocol):
    """What a router knows of a request: what a real router's HTTP request carries."""

    request_id: str
    session_id: str  # the conversation's first request id (a follow-up shares its root's)
    prompt_len: int
    output_len: int  # the request's max_tokens

    def prompt_block_keys(self) -> list[int]:
        """Chained keys of the prompt's full blocks that can hit a cache (the replicas' keys)."""
        ...


class ReplicaState(Protocol):
    """A replica as a router may observe it. Counters the router keeps itself (what it sent and
    what came back) and the replica's load as a metrics scrape shows it are cheap and every
    router may read them; `cached_prefix_blocks` is the exact cache probe only `precise_prefix`
    and the weighted scorer (with `prefix=precise`) use."""

    index: int
    num_blocks: int  # the replica's KV cache size, in blocks
    requests_in_flight: int  # routed here and not yet finished (the router's own count)
    tokens_in_flight: int  # prompt + max output tokens of those requests (the router's own count)
    num_waiting: int  # the replica's queue depth now
    num_running: int
    kv_usage: float  # blocks in use / all blocks, now

    def cached_prefix_blocks(self, request: RoutedRequest) -> int:
        """How many leading prompt blocks of `request` the replica's cache holds now (read-only)."""
        ...


@dataclass(frozen=True)
class RouterContext:
    num_replicas: int
    block_size: int
    replica_blocks: tuple[int, ...]  # each replica's KV cache size, in blocks
    seed_seq: np.random.SeedSequence  # the router's own random stream, if it draws


class Router(abc.ABC):
    def __init__(self, cfg: RouterConfig, ctx: RouterContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @abc.abstractmethod
    def route(self, request: RoutedRequest, replicas: Sequence[ReplicaState]) -> int:
        """The index of the replica that serves `request`."""

    def stats(self) -> dict:
        """Router-specific counters for metrics.json (e.g. how often a guard fired)."""
        return {}


def least_loaded(replicas: Sequence[ReplicaState], candidates: Sequence[int] | None = None) -> int:
    """The candidate with the fewest requests in flight, then the fewest tokens, then the lowest
    index (so a tie is broken the same way every run)."""
    idx = range(len(replicas)) if candidates is None else candidates
    return min(idx, key=lambda i: (replicas[i].requests_in_flight, replicas[i].tokens_in_flight, i))


def leading_matches(keys: Sequence[int], held) -> int:
    """How many of `keys`, from the first, are in `held` (a set-like of keys)."""
    n = 0
    for k in keys:
        if k not in held:
            break
        n += 1
    return n
