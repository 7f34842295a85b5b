"""A workload as a stream: requests made one at a time, in arrival order, only when due.

A million-request run must not hold a million prompts. A build function may therefore return a
`SpecSource` instead of a list: how many requests there are, a few per-request numbers (arrival
times, lengths) and `make(i)`, which builds spec i with its tokens when the frontend needs it.
`Workload` applies the run-wide rules (arrival process, tenants, priority classes) to such a
source as per-request arrays and yields `(index, spec)` in arrival order, exactly the specs and
indices that sorting the materialised list would give (`specs()` is that list, for the drivers
that need every spec at once: the Belady oracle, a cluster, the engine). A build function that
returns a list (workloads with follow-ups) is wrapped as is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from apcsim.core.request import RequestSpec


@dataclass(frozen=True)
class SpecSource:
    """What a workload without follow-ups returns when its specs need not all exist at once.

    Invariant: `make(i)` returns an equal spec for the same i, whatever was made before (any
    order works; increasing i is the cheap one, and the order a run asks in when arrival order
    is workload order).
    """

    count: int  # request ids are unique by construction
    # make(i, **fields): spec i in workload order, tokens included; `fields` are RequestSpec
    # fields the run-wide rules set (arrival_time, cache_salt, priorities), given at construction
    # so that a spec is built once.
    make: Callable[..., RequestSpec]
    min_tokens: int  # fewest prompt + output tokens of any request (the KV cache must fit one)
    arrival_times: np.ndarray | None = None  # float64 [count], the workload's own; None: all 0
    has_retention: bool = False  # some spec has retention_ranges (a shared prompt part)
    own_salts: bool = False  # some spec has a cache_salt of its own (a trace's tenant field)
    own_priority_id: str | None = None  # the first spec with priority != 0 or a retention_priority
    nonzero_priority: bool = False  # some spec has priority != 0

    def truncated(self, n: int) -> SpecSource:
        """The first n requests (n <= count)."""
        times = None if self.arrival_times is None else self.arrival_times[:n]
        return dataclasses.replace(self, count=n, arrival_times=times)


@dataclass(frozen=True)
class SpecOverrides:
    """Per-request values the run-wide rules set, by workload position (None: the spec's own)."""

    arrival_times: np.ndarray | None = None  # float64 [count]
    tenants: np.ndarray | None = None  # tenant number k (salt "tenant-k"), see base.assign_tenants
    classes: list | None = None  # PriorityClass per request, see priorities.assign_priority_classes


class Workload:
    """A run's requests: their number, what the run must know up front, and the specs in arrival
    order, made lazily from a `SpecSource` or taken from a list."""

    def __init__(self, specs: list[RequestSpec] | None = None, *, source: SpecSource | None = None,
                 overrides: SpecOverrides | None = None) -> None:
        if (specs is None) == (source is None):
            raise ValueError("a Workload is a list of specs or a SpecSource, not both")
        self._list = specs
        self._source = source
        self._over = overrides or SpecOverrides()
        if specs is not None:
            self.num_requests = len(specs)
            self.by_class = any(s.in_priority_class for s in specs)
            self.min_tokens = min(s.prompt_len + s.output_len for s in specs)
            return
        self.num_requests = source.count
        self.by_class = self._over.classes is not None or source.nonzero_priority
        self.min_tokens = source.min_tokens
        times = self._over.arrival_times if self._over.arrival_times is not None else source.arrival_times
        # Arrival order, ties in workload order: what sorting the materialised list gives.
        self._order = None if times is None else np.argsort(times, kind="stable")
        if self._order is not None and np.array_equal(self._order, np.arange(source.count)):
            self._order = None  # workload order already (the common case): no array to hold

    @property
    def is_lazy(self) -> bool:
        return self._source is not None

    def __len__(self) -> int:
        return self.num_requests

    def _spec(self, i: int) -> RequestSpec:
        """Spec i of the workload with the run-wide rules applied."""
        over, changes = self._over, {}
        if over.tenants is not None:
            changes["cache_salt"] = f"tenant-{int(over.tenants[i])}"
        if over.classes is not None:
            c = over.classes[i]
            changes.update(priority=int(c.priority), priority_class=c.name, retention_priority=c.retention_priority,
                           retention_duration_s=c.retention_duration_s)
        if over.arrival_times is not None:
            changes["arrival_time"] = float(over.arrival_times[i])
        return self._source.make(i, **changes)  # type: ignore[union-attr]

    def entries(self) -> Iterator[tuple[int, RequestSpec]]:
        """(index, spec) in arrival order; index is the position in that order (it seeds the
        request's output tokens and orders the metrics)."""
        if self._list is not None:
            yield from enumerate(self._list)
            return
        order = self._order
        for rank in range(self.num_requests):
            yield rank, self._spec(rank if order is None else int(order[rank]))

    def specs(self) -> list[RequestSpec]:
        """Every spec, in arrival order (all tokens materialised)."""
        return list(self._list) if self._list is not None else [s for _, s in self.entries()]
