"""Pluggable eviction and scheduling policies (pure Python). See `policies.registry`."""

# Policy modules are imported when a policy is looked up or the tables are listed (policies.registry).
from policies.registry import EVICTION_POLICIES, ROUTING_POLICIES, SCHEDULING_POLICIES, load_all

__all__ = ["EVICTION_POLICIES", "ROUTING_POLICIES", "SCHEDULING_POLICIES", "load_all"]
