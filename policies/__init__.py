"""Pluggable eviction and scheduling policies (pure Python). See `policies.registry`."""

from policies.registry import EVICTION_POLICIES, ROUTING_POLICIES, SCHEDULING_POLICIES, load_all

load_all()

__all__ = ["EVICTION_POLICIES", "ROUTING_POLICIES", "SCHEDULING_POLICIES", "load_all"]
