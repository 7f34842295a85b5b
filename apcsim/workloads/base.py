"""The workload registry and the arrival-time rules shared by every workload.

A workload is one function `build(cfg, ctx) -> list[RequestSpec] | SpecSource` (a source makes
its specs one at a time, see `_stream`) registered under a name with
its typed config dataclass (a subclass of `WorkloadConfig`). `apcsim.config` puts every registered
config into Hydra's ConfigStore as an option of the `workload` group, so adding a workload is one
file in this package.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from apcsim.core.request import RequestSpec
from apcsim.errors import ConfigError
from apcsim.workloads._stream import SpecOverrides, SpecSource, Workload
from apcsim.workloads.priorities import PriorityClass, assign_priority_classes, check_shared_retention, draw_classes
from policies.registry import Registry


@dataclass
class WorkloadConfig:
    """Keys every workload has.

    arrival: "trace" keeps the workload's own timestamps (synthetic workloads put every request
    at t=0, as a serving benchmark with request_rate=inf does); "burst" puts all at t=0;
    "poisson" replaces them with a Poisson process of `request_rate` requests per second (setting
    `request_rate` alone implies it).
    """

    name: str = "?"
    arrival: str = "trace"
    request_rate: Optional[float] = None
    num_requests: Optional[int] = None  # synthetic: how many; traces: keep the first N (None: all)
    # Tenants: N > 0 gives each conversation (a request and its follow-ups) one of N cache salts,
    # drawn uniformly from its own seeded stream; tenants never share cached blocks. None: the
    # workload's own salts (a trace's `cache_salt`/`tenant` field), else one shared cache.
    num_tenants: Optional[int] = None
    # Request priorities and KV retention priorities (apcsim/workloads/priorities.py): classes
    # with shares, drawn per conversation from their own stream; empty: every request priority 0.
    priority_classes: List[PriorityClass] = field(default_factory=list)
    # Retention priority (0..100, priority_lru) of the prompt part every request shares (system
    # prompt, common prefix, RAG chunks), and for how long after its last use; None: not set.
    shared_retention_priority: Optional[int] = None
    shared_retention_duration_s: Optional[float] = None


@dataclass(frozen=True)
class BuildContext:
    """What a workload may use beyond its config: the model's vocabulary and its own random stream."""

    vocab_size: int
    rng: np.random.Generator  # this workload's own stream; never the global one
    seed: int


BuildFn = Callable[[WorkloadConfig, BuildContext], "list[RequestSpec] | SpecSource"]


@dataclass(frozen=True)
class WorkloadEntry:
    name: str
    config_cls: type
    build: BuildFn


# A workload's module is named after it and imported when its name is looked up (policies.registry).
WORKLOADS: Registry[WorkloadEntry] = Registry("apcsim.workloads", "workload")


def register_workload(name: str, config_cls: type) -> Callable[[BuildFn], BuildFn]:
    """Register `build` under `name`; `config_cls` is its typed Hydra schema."""

    def deco(fn: BuildFn) -> BuildFn:
        WORKLOADS.add(name, WorkloadEntry(name, config_cls, fn))
        return fn

    return deco


def build_workload(cfg: WorkloadConfig, *, vocab_size: int, seed_seq: np.random.SeedSequence) -> list[RequestSpec]:
    """Build the workload's requests and apply the arrival rule; sorted by arrival time."""
    return open_workload(cfg, vocab_size=vocab_size, seed_seq=seed_seq, materialise=True).specs()


def open_workload(cfg: WorkloadConfig, *, vocab_size: int, seed_seq: np.random.SeedSequence,
                  materialise: bool = False) -> Workload:
    """The workload's requests with the arrival rule applied, in arrival order: made one at a
    time as the run reaches them when the workload builds a `SpecSource`, else a list.
    `materialise`: the caller will hold every spec at once (memory is checked for that)."""
    entry = WORKLOADS.get(cfg.name)
    if entry is None:
        raise ConfigError(f"unknown workload {cfg.name!r}; known: {', '.join(sorted(WORKLOADS))}")
    # spawn(n)'s first children equal spawn(n-1)'s: a stream added later leaves the others as they were.
    build_ss, arrival_ss, tenant_ss, class_ss = seed_seq.spawn(4)
    check_shared_retention(cfg)
    ctx = BuildContext(vocab_size=vocab_size, rng=np.random.default_rng(build_ss), seed=int(build_ss.generate_state(1)[0]))
    check_memory(entry, cfg, BuildContext(vocab_size, np.random.default_rng(build_ss), ctx.seed), materialise)
    built = entry.build(cfg, ctx)
    count = built.count if isinstance(built, SpecSource) else len(built)
    if cfg.num_requests is not None:
        if cfg.num_requests < 1:
            raise ConfigError(f"workload.num_requests must be >= 1, got {cfg.num_requests}")
        if count < cfg.num_requests:
            # A user who asks for N requests and silently gets fewer compares the wrong runs.
            where = f" in {cfg.path}" if isinstance(getattr(cfg, "path", None), str) else ""
            raise ConfigError(f"workload.num_requests={cfg.num_requests} but the {cfg.name} workload has only "
                              f"{count} requests{where}; ask for at most {count}, or drop "
                              "workload.num_requests to take them all")
        count = cfg.num_requests
        built = built.truncated(count) if isinstance(built, SpecSource) else built[:count]
    if not count:
        raise ConfigError(f"workload {cfg.name!r} produced no requests")
    if isinstance(built, SpecSource):
        return _lazy_workload(built, cfg, arrival_ss, tenant_ss, class_ss)
    specs = built
    if cfg.num_tenants is not None:
        specs = assign_tenants(specs, cfg, np.random.default_rng(tenant_ss))
    if cfg.shared_retention_priority is not None and not any(s.retention_ranges for s in specs):
        raise ConfigError(NO_SHARED_PART.format(name=cfg.name))
    if cfg.priority_classes:
        specs = assign_priority_classes(specs, cfg, np.random.default_rng(class_ss))
    specs = apply_arrivals(specs, cfg, np.random.default_rng(arrival_ss))
    return Workload(sorted(specs, key=lambda s: s.arrival_time))  # stable: ties keep workload order


NO_SHARED_PART = ("workload.shared_retention_priority: the {name} workload has no shared prompt part "
                  "(it applies to system_prompt, shared_prefix, multiturn and rag with a shared part > 0)")


def _lazy_workload(src: SpecSource, cfg: WorkloadConfig, arrival_ss, tenant_ss, class_ss) -> Workload:
    """The list path's rules as per-request arrays, drawn from the same streams in the same
    order: a source has no follow-ups, so every request is a root, in workload order."""
    tenants = classes = None
    if cfg.num_tenants is not None:
        check_tenants(cfg, src.own_salts)
        tenants = np.random.default_rng(tenant_ss).integers(0, cfg.num_tenants, src.count)
    if cfg.shared_retention_priority is not None and not src.has_retention:
        raise ConfigError(NO_SHARED_PART.format(name=cfg.name))
    if cfg.priority_classes:
        classes = draw_classes(cfg, src.count, np.random.default_rng(class_ss), src.own_priority_id)
    own = src.arrival_times if src.arrival_times is not None else np.zeros(src.count)
    times = arrival_times(own, np.ones(src.count, dtype=bool), cfg, np.random.default_rng(arrival_ss))
    del own
    return Workload(source=src, overrides=SpecOverrides(times, tenants, classes))


# Above this many requests the workload's memory is estimated before it is built.
_PROBE_ABOVE = 100_000
_PROBE_SIZE = 1_000


def check_memory(entry: WorkloadEntry, cfg: WorkloadConfig, ctx: BuildContext, materialise: bool) -> None:
    """Refuse a num_requests whose requests cannot fit this machine's memory, before building them:
    the first `_PROBE_SIZE` requests are built and their size extrapolated. A workload made one
    request at a time (`SpecSource`) that is not materialised keeps only a few numbers a request."""
    from apcsim.hostmem import SPEC_BYTES_OVERHEAD, STREAMED_BYTES_PER_REQUEST, check_fits

    n = cfg.num_requests
    if isinstance(n, bool) or not isinstance(n, int) or n <= _PROBE_ABOVE or hasattr(cfg, "path"):
        return  # a trace's requests are bounded by its file, and a longer ask is refused after reading
    probe = entry.build(dataclasses.replace(cfg, num_requests=_PROBE_SIZE), ctx)
    if isinstance(probe, SpecSource):
        if not materialise:
            check_fits(f"workload.num_requests={n} ({STREAMED_BYTES_PER_REQUEST} bytes a request, streamed)",
                       n * STREAMED_BYTES_PER_REQUEST, "lower workload.num_requests")
            return
        probe = [probe.make(i) for i in range(min(probe.count, _PROBE_SIZE))]
    probe = probe[:_PROBE_SIZE]
    if not probe:
        return
    per_request = sum(s.prompt_token_ids.nbytes for s in probe) / len(probe) + SPEC_BYTES_OVERHEAD
    check_fits(f"workload.num_requests={n} ({per_request / 1024:.1f} KiB a request)", n * per_request,
               "lower workload.num_requests")


def check_tenants(cfg: WorkloadConfig, own_salts: bool) -> None:
    n = cfg.num_tenants
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"workload.num_tenants must be an integer >= 1, got {n!r}")
    if own_salts:
        raise ConfigError(f"workload.num_tenants={n} conflicts with the tenants the {cfg.name} workload already "
                          "has (a trace's cache_salt/tenant field); drop one")


def assign_tenants(specs: list[RequestSpec], cfg: WorkloadConfig, rng: np.random.Generator) -> list[RequestSpec]:
    """Salt each conversation with one of `num_tenants` tenants; a follow-up keeps its parent's."""
    check_tenants(cfg, any(s.cache_salt is not None for s in specs))
    roots = [s for s in specs if s.parent_id is None]
    draws = rng.integers(0, cfg.num_tenants, len(roots))
    salt_of = {s.request_id: f"tenant-{int(k)}" for s, k in zip(roots, draws)}
    out = []
    for s in specs:  # parents precede their follow-ups in every workload's order
        salt = salt_of[s.request_id] if s.parent_id is None else salt_of[s.parent_id]
        salt_of[s.request_id] = salt
        out.append(dataclasses.replace(s, cache_salt=salt))
    return out


def apply_arrivals(specs: list[RequestSpec], cfg: WorkloadConfig, rng: np.random.Generator) -> list[RequestSpec]:
    """Re-time the requests that start something (no parent); follow-ups keep arriving a think
    time after their parent finishes, whatever the arrival rule."""
    own = np.array([s.arrival_time for s in specs], dtype=np.float64)
    times = arrival_times(own, np.array([s.parent_id is None for s in specs], dtype=bool), cfg, rng)
    if times is None:
        return specs
    return [dataclasses.replace(s, arrival_time=float(t)) if s.parent_id is None else s for s, t in zip(specs, times)]


def arrival_times(own: np.ndarray, is_root: np.ndarray, cfg: WorkloadConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Every request's arrival time under the arrival rule (float64, workload order), given the
    workload's own times; None for `trace` (the own times stand)."""
    arrival = cfg.arrival
    if cfg.request_rate is not None and arrival != "poisson":
        if arrival == "burst":
            raise ConfigError("workload.request_rate contradicts workload.arrival=burst; drop one")
        arrival = "poisson"  # a rate on its own means a Poisson override, as in vLLM's benchmark
    if arrival == "trace":
        return None
    roots = np.flatnonzero(is_root)
    roots = roots[np.argsort(own[roots], kind="stable")]  # stable: keep the trace's order
    if arrival == "burst":
        times = np.zeros(len(roots))
    elif arrival == "poisson":
        rate = cfg.request_rate
        if rate is None or isinstance(rate, bool) or not (rate > 0) or math.isinf(rate):
            raise ConfigError(f"workload.arrival=poisson needs a finite workload.request_rate > 0, got {rate}")
        times = np.cumsum(rng.exponential(1.0 / rate, len(roots)))
        times -= times[0]
    else:
        raise ConfigError(f"workload.arrival must be one of trace, burst, poisson; got {cfg.arrival!r}")
    out = own.copy()
    out[roots] = times
    return out
