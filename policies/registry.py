"""Policies are registered by name with their typed config; `apcsim.config` puts the configs
into Hydra's ConfigStore, so adding a policy is one file in `policies/eviction`,
`policies/scheduling` or `policies/routing` and nothing else.

A table imports its policies' modules when they are needed, not all at start-up: looking a name
up imports the module of that name in its package (a policy's module is named after it), and
listing the table (iterating, its length, keys, values, items) imports every module, so
`--help`, the ConfigStore and an unknown name's error still see every registered policy."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class Registry(dict[str, V]):
    """name -> entry, filled by the modules of `package` as they are imported (see the module
    doc); modules found on disk, except those whose name starts with `_`. `kind` names an entry
    in errors ("eviction policy", "workload")."""

    def __init__(self, package: str, kind: str) -> None:
        super().__init__()
        self.package = package
        self.kind = kind
        self._all_loaded = False

    def _load(self, name: object) -> None:
        if isinstance(name, str) and not dict.__contains__(self, name) and not self._all_loaded \
                and name.isidentifier() and not name.startswith("_"):
            try:
                importlib.import_module(f"{self.package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{self.package}.{name}":  # the module exists but an import in it failed
                    raise

    def load_all(self) -> None:
        if not self._all_loaded:
            pkg = importlib.import_module(self.package)
            for mod in pkgutil.iter_modules(pkg.__path__):
                if not mod.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{mod.name}")
            self._all_loaded = True

    def add(self, name: str, entry: V) -> None:
        """Register `entry` (a module being imported does so): a name registered twice is a bug."""
        if dict.__contains__(self, name):
            raise ValueError(f"{self.kind} {name!r} registered twice")
        dict.__setitem__(self, name, entry)

    def __getitem__(self, name: str) -> V:
        self._load(name)
        return dict.__getitem__(self, name)

    def get(self, name: str, default=None):  # type: ignore[override]
        self._load(name)
        return dict.get(self, name, default)

    def __contains__(self, name: object) -> bool:
        self._load(name)
        return dict.__contains__(self, name)

    def __iter__(self):
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def keys(self):  # type: ignore[override]
        self.load_all()
        return dict.keys(self)

    def values(self):  # type: ignore[override]
        self.load_all()
        return dict.values(self)

    def items(self):  # type: ignore[override]
        self.load_all()
        return dict.items(self)

    def __repr__(self) -> str:
        self.load_all()
        return dict.__repr__(self)


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    cls: type
    config_cls: type


EVICTION_POLICIES: Registry[PolicyEntry] = Registry("policies.eviction", "eviction policy")
SCHEDULING_POLICIES: Registry[PolicyEntry] = Registry("policies.scheduling", "scheduling policy")
ROUTING_POLICIES: Registry[PolicyEntry] = Registry("policies.routing", "routing policy")


def _register(table: Registry[PolicyEntry], name: str, config_cls: type) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        table.add(name, PolicyEntry(name, cls, config_cls))  # type: ignore[arg-type]
        return cls

    return deco


def register_eviction(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: an `EvictionPolicy` selectable as `+policy=NAME`."""
    return _register(EVICTION_POLICIES, name, config_cls)


def register_scheduling(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: a `SchedulingPolicy` selectable as `scheduler=NAME`."""
    return _register(SCHEDULING_POLICIES, name, config_cls)


def register_routing(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: a `Router` of a cluster selectable as `router=NAME`."""
    return _register(ROUTING_POLICIES, name, config_cls)


def load_all() -> None:
    """Import every policy module (see the module doc)."""
    for table in (EVICTION_POLICIES, SCHEDULING_POLICIES, ROUTING_POLICIES):
        table.load_all()
