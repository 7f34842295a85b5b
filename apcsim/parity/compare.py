"""Compare apcsim's and vLLM's step logs of one replay."""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("scheduled", "preempted", "admitted", "counters")
COUNTERS = ("queries", "hits", "preempted_queries", "preempted_hits")


@dataclass
class Side:
    """One engine's totals over a replay (its own counters, not recomputed)."""

    steps: int
    queries: int
    hits: int
    preemptions: int
    tokens: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @classmethod
    def of(cls, steps: list[dict]) -> "Side":
        last = steps[-1]["counters"] if steps else [0, 0, 0, 0]
        return cls(steps=len(steps), queries=last[0], hits=last[1],
                   preemptions=sum(len(s["preempted"]) for s in steps),
                   tokens=sum(sum(s["scheduled"].values()) for s in steps))


@dataclass
class Comparison:
    apcsim: Side
    vllm: Side
    first_diff: int | None  # the first step (0-based) where the logs differ; None: identical
    diff: str  # what differs there, in words
    steps_alike: int  # leading steps that are equal

    @property
    def identical(self) -> bool:
        return self.first_diff is None


def _normal(step: dict) -> dict:
    return {"scheduled": dict(step["scheduled"]), "preempted": sorted(step["preempted"]),
            "admitted": dict(step["admitted"]), "counters": list(step["counters"])}


def _describe(a: dict, v: dict) -> str:
    parts = []
    for f in FIELDS:
        if a[f] == v[f]:
            continue
        if isinstance(a[f], dict):
            keys = sorted(set(a[f]) | set(v[f]))
            diff = {k: (a[f].get(k), v[f].get(k)) for k in keys if a[f].get(k) != v[f].get(k)}
            shown = dict(list(diff.items())[:6])
            parts.append(f"{f} (apcsim, vllm): {shown}{' ...' if len(diff) > 6 else ''}")
        elif f == "counters":
            parts.append("counters " + ", ".join(f"{n} {x} vs {y}" for n, x, y in zip(COUNTERS, a[f], v[f]) if x != y))
        else:
            parts.append(f"{f}: apcsim {a[f]} vs vllm {v[f]}")
    return "; ".join(parts)


def compare(apcsim_steps: list[dict], vllm_steps: list[dict], vllm_error: str | None = None) -> Comparison:
    a_side, v_side = Side.of(apcsim_steps), Side.of(vllm_steps)
    for i, (a, v) in enumerate(zip(apcsim_steps, vllm_steps)):
        na, nv = _normal(a), _normal(v)
        if na != nv:
            return Comparison(a_side, v_side, i, _describe(na, nv), i)
    n = min(len(apcsim_steps), len(vllm_steps))
    if len(apcsim_steps) != len(vllm_steps) or vllm_error:
        why = vllm_error or f"apcsim ran {len(apcsim_steps)} steps, vllm {len(vllm_steps)}"
        return Comparison(a_side, v_side, n, why, n)
    return Comparison(a_side, v_side, None, "", n)
