"""Policies are registered by name with their typed config; `apcsim.config` puts the configs
into Hydra's ConfigStore, so adding a policy is one file in `policies/eviction`,
`policies/scheduling` or `policies/routing` and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    cls: type
    config_cls: type


EVICTION_POLICIES: dict[str, PolicyEntry] = {}
SCHEDULING_POLICIES: dict[str, PolicyEntry] = {}
ROUTING_POLICIES: dict[str, PolicyEntry] = {}


def _register(table: dict[str, PolicyEntry], kind: str, name: str, config_cls: type) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        if name in table:
            raise ValueError(f"{kind} policy {name!r} registered twice")
        table[name] = PolicyEntry(name, cls, config_cls)  # type: ignore[arg-type]
        return cls

    return deco


def register_eviction(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: an `EvictionPolicy` selectable as `+policy=NAME`."""
    return _register(EVICTION_POLICIES, "eviction", name, config_cls)


def register_scheduling(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: a `SchedulingPolicy` selectable as `scheduler=NAME`."""
    return _register(SCHEDULING_POLICIES, "scheduling", name, config_cls)


def register_routing(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: a `Router` of a cluster selectable as `router=NAME`."""
    return _register(ROUTING_POLICIES, "routing", name, config_cls)


def load_all() -> None:
    """Import every policy module so its decorator runs (modules are found on disk)."""
    import importlib
    import pkgutil

    from policies import eviction, routing, scheduling

    for pkg in (eviction, scheduling, routing):
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
