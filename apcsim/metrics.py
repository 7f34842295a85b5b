"""Metrics in vLLM's names and units, collected from step results by any executor.

Everything here is a pure function of the steps and requests it is given, so a simulation's
`metrics.json` is byte-identical across runs of the same config and seed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apcsim.core.request import Request, Status
from apcsim.core.scheduler import Scheduler, StepResult

PERCENTILES = (50, 90, 99)


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> list[float]:
    """Percentiles of a sample where value i occurs weights[i] times (numpy's 'inverted_cdf')."""
    order = np.argsort(values, kind="stable")
    v, cw = values[order], np.cumsum(weights[order])
    total = cw[-1]
    return [float(v[min(np.searchsorted(cw, q / 100.0 * total, side="left"), len(v) - 1)]) for q in qs]


def summarize(values, weights=None) -> dict:
    """mean, p50, p90, p99 of a sample; an empty sample gives n=0 and nulls (not a made-up 0)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    if v.size == 0:
        return {"n": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
    mean = float(np.dot(v, w) / w.sum())
    ps = _weighted_percentiles(v, w, PERCENTILES)
    return {"n": int(w.sum()), "mean": mean, **{f"p{q}": p for q, p in zip(PERCENTILES, ps)}}


@dataclass
class Timeline:
    """One row per executed step or skipped stretch of steps (so O(events) rows)."""

    time: list[float] = field(default_factory=list)  # end of the step/stretch, s
    steps: list[int] = field(default_factory=list)  # steps it covers
    batch: list[int] = field(default_factory=list)  # requests scheduled per step
    tokens: list[int] = field(default_factory=list)  # tokens per step
    kv_usage: list[float] = field(default_factory=list)  # blocks in use / all blocks
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    preemptions: list[int] = field(default_factory=list)  # cumulative
    hit_rate: list[float] = field(default_factory=list)  # cumulative prefix-cache hit rate

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


class MetricsCollector:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.timeline = Timeline()
        self._itl_values: list[np.ndarray] = []
        self._itl_weights: list[np.ndarray] = []
        self.num_steps = 0
        self.busy_time = 0.0

    def record_step(self, now: float, duration: float, num_requests: int, num_tokens: int, result: StepResult) -> None:
        self.num_steps += 1
        self.busy_time += duration
        if result.num_regular_decodes:
            self._itl_values.append(np.array([duration]))
            self._itl_weights.append(np.array([result.num_regular_decodes], dtype=np.float64))
        if result.itl_samples:
            self._itl_values.append(np.asarray(result.itl_samples, dtype=np.float64))
            self._itl_weights.append(np.ones(len(result.itl_samples)))
        self._row(now, 1, num_requests, num_tokens)

    def record_stretch(self, now: float, durations: np.ndarray, num_seqs: int) -> None:
        """k quiet decode steps of `num_seqs` requests each; durations is float64 [k]."""
        k = len(durations)
        self.num_steps += k
        for d in durations.tolist():  # one at a time, as record_step would: bit-identical sums
            self.busy_time += d
        self._itl_values.append(durations)
        self._itl_weights.append(np.full(k, float(num_seqs)))
        self._row(now, k, num_seqs, num_seqs)

    def _row(self, now: float, steps: int, batch: int, tokens: int) -> None:
        s, t = self.scheduler, self.timeline
        pool = s.kv.pool
        t.time.append(now)
        t.steps.append(steps)
        t.batch.append(batch)
        t.tokens.append(tokens)
        t.kv_usage.append(pool.num_used / pool.num_blocks)
        t.running.append(len(s.running))
        t.waiting.append(s.num_waiting)
        t.preemptions.append(s.stats.num_preemptions)
        q = s.stats.prefix_cache_queries
        t.hit_rate.append(s.stats.prefix_cache_hits / q if q else 0.0)

    def summary(self, requests: list[Request], extra: dict | None = None) -> dict:
        st = self.scheduler.stats
        done = [r for r in requests if r.status is Status.FINISHED]
        if requests and len(done) + st.num_rejected != len(requests):
            raise RuntimeError(f"{len(requests) - len(done) - st.num_rejected} requests neither finished nor rejected")
        start = min((r.spec.arrival_time for r in requests), default=0.0)
        end = max((r.finish_time for r in done), default=start)
        duration = end - start
        out_tokens = sum(r.num_output_tokens for r in done)
        in_tokens = sum(r.prompt_len for r in done)
        ttft = [r.first_token_time - r.arrival_time for r in done]
        e2e = [r.finish_time - r.arrival_time for r in done]
        tpot = [(r.finish_time - r.first_token_time) / (r.num_output_tokens - 1) for r in done if r.num_output_tokens > 1]
        itl_v = np.concatenate(self._itl_values) if self._itl_values else np.zeros(0)
        itl_w = np.concatenate(self._itl_weights) if self._itl_weights else np.zeros(0)
        rate = lambda x: x / duration if duration > 0 else 0.0  # noqa: E731
        q = st.prefix_cache_queries
        tl = self.timeline
        weights = np.asarray(tl.steps, dtype=np.float64)
        m = {
            "num_requests": len(requests),
            "num_finished": len(done),
            "num_rejected": st.num_rejected,
            "prefix_cache_queries": q,
            "prefix_cache_hits": st.prefix_cache_hits,
            "prefix_cache_hit_rate": st.prefix_cache_hits / q if q else 0.0,
            "preempted_prefix_cache_queries": st.preempted_prefix_cache_queries,
            "preempted_prefix_cache_hits": st.preempted_prefix_cache_hits,
            "prompt_tokens": in_tokens,
            "prompt_tokens_computed": st.prompt_tokens_computed,
            "recomputed_tokens": st.recomputed_tokens,
            "output_tokens": out_tokens,
            "num_preemptions": st.num_preemptions,
            "num_evictions": self.scheduler.kv.pool.num_evictions,
            "num_steps": self.num_steps,
            "duration_s": duration,
            "busy_fraction": self.busy_time / duration if duration > 0 else 0.0,
            "output_throughput_tok_s": rate(out_tokens),
            "total_token_throughput_tok_s": rate(out_tokens + in_tokens),
            "request_throughput_rps": rate(len(done)),
            "mean_batch_size": float(np.dot(tl.batch, weights) / weights.sum()) if tl.steps else 0.0,
            "peak_kv_usage": max(tl.kv_usage, default=0.0),
            "ttft_s": summarize(ttft),
            "tpot_s": summarize(tpot),
            "itl_s": summarize(itl_v, itl_w),
            "e2e_s": summarize(e2e),
        }
        if extra:
            m.update(extra)
        return m


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(_clean(metrics), indent=2, sort_keys=False) + "\n")


REQUEST_COLUMNS = [
    "request_id", "arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "e2e_s",
    "prompt_tokens", "cached_tokens", "output_tokens", "preemptions", "priority", "rejected_reason",
]


def request_rows(requests: list[Request]) -> list[dict]:
    rows = []
    for r in requests:
        ok = r.status is Status.FINISHED
        rows.append({
            "request_id": r.request_id,
            "arrival_s": r.arrival_time,
            "first_scheduled_s": r.first_scheduled_time if ok else "",
            "first_token_s": r.first_token_time if ok else "",
            "finish_s": r.finish_time if ok else "",
            "ttft_s": r.first_token_time - r.arrival_time if ok else "",
            "e2e_s": r.finish_time - r.arrival_time if ok else "",
            "prompt_tokens": r.prompt_len,
            "cached_tokens": max(r.num_cached_tokens, 0),
            "output_tokens": r.num_output_tokens,
            "preemptions": r.num_preemptions,
            "priority": r.priority,
            "rejected_reason": r.rejected_reason,
        })
    return rows


def write_requests_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REQUEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def summary_line(m: dict, *, clock: str, where: str = "") -> str:
    """One line of a run's metrics for the terminal; `clock` says whose seconds they are."""
    c = m["config"]
    ttft = m["ttft_s"]["p50"]
    rejected = f", {m['num_rejected']} rejected" if m["num_rejected"] else ""
    return (
        f"{c['workload']} policy={c['policy']} block_size={c['block_size']}{where}: "
        f"{m['num_finished']}/{m['num_requests']} finished{rejected}, hit rate {m['prefix_cache_hit_rate']:.3f}, "
        f"{m['prompt_tokens_computed']} prompt tokens computed, {m['num_preemptions']} preemptions, "
        f"TTFT p50 {'n/a' if ttft is None else f'{ttft:.3f}s'}, {m['output_throughput_tok_s']:.0f} output tok/s "
        f"over {m['duration_s']:.2f}s {clock}"
    )
