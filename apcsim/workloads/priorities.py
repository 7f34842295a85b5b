"""Request priorities and KV retention priorities: the workload keys that set them, and the trace
fields that carry them.

Two engines' conventions, kept apart:
- `priority` (vLLM's `add_request(priority=...)` under `scheduling_policy="priority"`): an integer,
  lower is scheduled first and preempted last; any integer, 0 by default.
- retention priorities (TensorRT-LLM's `KvCacheRetentionConfig`): an integer in 0..100 per block,
  higher is kept longer, optionally for `duration_s` seconds after the block's last use; read by
  the `priority_lru` eviction policy only.

Synthetic workloads set them with two groups of keys (every workload has them):

    workload.priority_classes: [{name: interactive, share: 0.25, priority: 0, retention_priority: 60},
                                {name: batch, share: 0.75, priority: 1}]
    workload.shared_retention_priority: 90     # the prompt part every request shares
    workload.shared_retention_duration_s: null # forever

Each conversation (a request and its follow-ups) draws its class with probability share / sum of
shares from a stream of its own (SeedSequence child 3 of the workload's seed), so the existing
streams (tokens, arrivals, tenants) draw exactly what they drew before. A class sets the
request's `priority`, `priority_class` and its `retention_priority`/`retention_duration_s`,
which cover every block of the request outside the shared part (output blocks included).

The shared part is what the workload builds as shared: the system prompt (`system_prompt`,
`multiturn`), the common prefix (`shared_prefix`), the system prompt and the retrieved
document chunks (`rag`). It becomes one token range [0, shared) of `RequestSpec.retention_ranges`;
`priority_lru` gives a block the range's priority when the block's FIRST token is in the range,
as TensorRT-LLM maps token ranges to blocks, so the block straddling the shared part and the
rest is retained too (one block per request).

Traces carry the same three values per request (fields `priority`, `retention_priority`,
`retention_duration_s`; CSV columns of those names); `priority_classes` may be set on a trace
that has none of its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from apcsim.core.request import RequestSpec, TokenRetention
from apcsim.errors import ConfigError

MIN_RETENTION, MAX_RETENTION = 0, 100
PRIORITY_FIELDS = ("priority", "retention_priority", "retention_duration_s")


@dataclass
class PriorityClass:
    """One class of requests of a workload: `workload.priority_classes[i]`."""

    name: str = "default"
    share: float = 1.0  # relative: a conversation's chance is share / sum of shares
    priority: int = 0  # vLLM: lower is scheduled first
    retention_priority: Optional[int] = None  # 0..100 for priority_lru; None: the policy decides
    retention_duration_s: Optional[float] = None  # None: the retention priority never decays


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _retention_error(v) -> str | None:
    if not _is_int(v) or not MIN_RETENTION <= v <= MAX_RETENTION:
        return f"must be an integer in {MIN_RETENTION}..{MAX_RETENTION}, got {v!r}"
    return None


def _duration_error(v) -> str | None:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if not (ok and math.isfinite(v) and v > 0):
        return f"must be a finite number of seconds > 0 (or absent: forever), got {v!r}"
    return None


def check_classes(classes) -> list[PriorityClass]:
    """`workload.priority_classes`, checked: distinct names, shares > 0, values in range."""
    out = []
    for i, c in enumerate(classes):
        where = f"workload.priority_classes[{i}]"
        if not isinstance(c.name, str) or not c.name:
            raise ConfigError(f"{where}.name must be a non-empty string, got {c.name!r}")
        if not isinstance(c.share, (int, float)) or isinstance(c.share, bool) or not (math.isfinite(c.share) and c.share > 0):
            raise ConfigError(f"{where}.share must be a finite number > 0, got {c.share!r}")
        if not _is_int(c.priority):
            raise ConfigError(f"{where}.priority must be an integer (lower is scheduled first), got {c.priority!r}")
        if c.retention_priority is not None and (err := _retention_error(c.retention_priority)):
            raise ConfigError(f"{where}.retention_priority {err}")
        if c.retention_duration_s is not None:
            if c.retention_priority is None:
                raise ConfigError(f"{where}.retention_duration_s needs a retention_priority")
            if err := _duration_error(c.retention_duration_s):
                raise ConfigError(f"{where}.retention_duration_s {err}")
        out.append(c)
    names = [c.name for c in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"workload.priority_classes: class name {dup!r} given twice")
    return out


def assign_priority_classes(specs: list[RequestSpec], cfg, rng: np.random.Generator) -> list[RequestSpec]:
    """Each conversation draws a class from `cfg.priority_classes`; follow-ups keep the parent's."""
    own = next((s for s in specs if s.priority != 0 or s.retention_priority is not None), None)
    roots = [s for s in specs if s.parent_id is None]
    drawn = draw_classes(cfg, len(roots), rng, None if own is None else own.request_id)
    class_of = {s.request_id: c for s, c in zip(roots, drawn)}
    out = []
    for s in specs:  # parents precede their follow-ups in every workload's order
        c = class_of[s.request_id] if s.parent_id is None else class_of[s.parent_id]
        class_of[s.request_id] = c
        out.append(dataclasses.replace(s, priority=int(c.priority), priority_class=c.name,
                                       retention_priority=c.retention_priority,
                                       retention_duration_s=c.retention_duration_s))
    return out


def draw_classes(cfg, num_roots: int, rng: np.random.Generator, own: str | None) -> list[PriorityClass]:
    """One class per conversation, in workload order. `own`: a request that has priorities of
    its own (a conflict), None if none has."""
    classes = check_classes(cfg.priority_classes)
    if own is not None:
        raise ConfigError(f"workload.priority_classes conflicts with the priorities the {cfg.name} workload already "
                          f"has (request {own}: a trace's priority/retention_priority field); drop one")
    shares = np.array([c.share for c in classes], dtype=np.float64)
    draws = rng.choice(len(classes), size=num_roots, p=shares / shares.sum())
    return [classes[int(k)] for k in draws]


def shared_retention(cfg, shared_tokens: int) -> tuple[TokenRetention, ...]:
    """The `retention_ranges` of a request whose first `shared_tokens` prompt tokens are the
    workload's shared part; () when `workload.shared_retention_priority` is unset or nothing is
    shared."""
    p = cfg.shared_retention_priority
    if p is None or shared_tokens <= 0:
        return ()
    return (TokenRetention(0, int(shared_tokens), int(p), cfg.shared_retention_duration_s),)


def check_shared_retention(cfg) -> None:
    p, d = cfg.shared_retention_priority, cfg.shared_retention_duration_s
    if p is not None and (err := _retention_error(p)):
        raise ConfigError(f"workload.shared_retention_priority {err}")
    if d is not None:
        if p is None:
            raise ConfigError("workload.shared_retention_duration_s needs workload.shared_retention_priority")
        if err := _duration_error(d):
            raise ConfigError(f"workload.shared_retention_duration_s {err}")


def trace_priority_flags(priorities: Sequence[dict], id_prefix: str) -> dict:
    """`SpecSource.own_priority_id` and `nonzero_priority` of a trace whose record i (request id
    f"{id_prefix}-{i}") has priorities[i] (`trace_priorities`' dicts): the first request with
    priorities of its own, which `priority_classes` would conflict with (the test
    `assign_priority_classes` makes on specs), and whether any has a priority != 0."""
    own = next((i for i, p in enumerate(priorities)
                if p.get("priority", 0) != 0 or p.get("retention_priority") is not None), None)
    return {"own_priority_id": None if own is None else f"{id_prefix}-{own}",
            "nonzero_priority": any(p.get("priority", 0) != 0 for p in priorities)}


def trace_priorities(fields: dict, where, *, cells: bool = False) -> dict:
    """The optional `priority`, `retention_priority`, `retention_duration_s` of one trace record
    as RequestSpec keyword arguments. `fields` holds JSON values, or with `cells` CSV cells
    (strings, parsed here; an empty cell is an absent field); `where(msg)` builds the TraceError
    naming file and line. A JSON null is an absent field too."""
    out = {}
    raw = {k: fields.get(k) for k in PRIORITY_FIELDS}
    for key in ("priority", "retention_priority"):
        v = raw[key]
        if v is None or (cells and v.strip() == ""):
            continue
        if cells:
            try:
                v = int(v.strip())
            except ValueError:
                raise where(f"{key} must be an integer, got {v!r}") from None
        if not _is_int(v):
            raise where(f"{key} must be an integer, got {v!r}")
        if key == "retention_priority" and (err := _retention_error(v)):
            raise where(f"{key} {err}")
        out[key] = int(v)
    d = raw["retention_duration_s"]
    if d is not None and not (cells and d.strip() == ""):
        if cells:
            try:
                d = float(d.strip())
            except ValueError:
                raise where(f"retention_duration_s must be a number, got {d!r}") from None
        if err := _duration_error(d):
            raise where(f"retention_duration_s {err}")
        if "retention_priority" not in out:
            raise where("retention_duration_s needs a retention_priority")
        out["retention_duration_s"] = float(d)
    return out
