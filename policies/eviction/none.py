"""`+policy=none`: prefix caching off. Nothing is cached or looked up; freed blocks are reused in
the order they were freed (the LRU queue without keys), as vLLM does with caching disabled."""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction.base import EvictionConfig
from policies.eviction.lru import LRUPolicy
from policies.registry import register_eviction


@dataclass
class NoCachingConfig(EvictionConfig):
    name: str = "none"


@register_eviction("none", NoCachingConfig)
class NoCachingPolicy(LRUPolicy):
    enables_caching = False
