"""Metrics in vLLM's names and units, collected from step results by any executor.

Everything here is a pure function of the steps and requests it is given, so a simulation's
`metrics.json` is byte-identical across runs of the same config and seed.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apcsim.core.request import Request
from apcsim.core.scheduler import Scheduler, StepResult
from apcsim.outputs.requestlog import RequestLog

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


def _floats() -> array:
    return array("d")


def _ints() -> array:
    return array("q")


@dataclass
class Timeline:
    """One row per executed step or skipped stretch of steps (so O(events) rows), in compact
    typed arrays (8 bytes a value, not a Python object each: a million-request run has ~10^6 rows)."""

    time: array = field(default_factory=_floats)  # end of the step/stretch, s
    steps: array = field(default_factory=_ints)  # steps it covers
    batch: array = field(default_factory=_ints)  # requests scheduled per step
    tokens: array = field(default_factory=_ints)  # tokens per step
    kv_usage: array = field(default_factory=_floats)  # blocks in use / all blocks
    running: array = field(default_factory=_ints)
    waiting: array = field(default_factory=_ints)
    preemptions: array = field(default_factory=_ints)  # cumulative
    hit_rate: array = field(default_factory=_floats)  # cumulative prefix-cache hit rate

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


class MetricsCollector:
    """Step rows (`timeline`), inter-token gaps and each request's outcome (`log`), all in
    bounded per-item memory; `summary` turns them into metrics.json."""

    def __init__(self, scheduler: Scheduler, log: RequestLog | None = None) -> None:
        self.scheduler = scheduler
        self.timeline = Timeline()
        self.log = log if log is not None else RequestLog()
        # Inter-token gaps: value i occurs weight i times (a cohort step is one gap per request).
        self._itl_values = array("d")
        self._itl_weights = array("d")
        self.num_steps = 0
        self.busy_time = 0.0

    def record_request(self, r: Request) -> None:
        """`r` left the system (finished or rejected); the caller may drop it after this."""
        self.log.add(r)

    def record_step(self, now: float, duration: float, num_requests: int, num_tokens: int, result: StepResult) -> None:
        self.num_steps += 1
        self.busy_time += duration
        if result.num_regular_decodes:
            self._itl_values.append(duration)
            self._itl_weights.append(float(result.num_regular_decodes))
        if result.itl_samples:
            self._itl_values.extend(result.itl_samples)
            self._itl_weights.extend([1.0] * len(result.itl_samples))
        self._row(now, 1, num_requests, num_tokens)

    def record_stretch(self, now: float, durations: list[float], num_seqs: int,
                       allocated: list[tuple[int, int]] = (), ends: list[float] | None = None,
                       start: float = 0.0) -> None:
        """k quiet decode steps of `num_seqs` requests each, `durations` their k step times.
        `allocated`: (step offset j, a) for steps in which a of the requests took a new block
        (`Scheduler.advance`); stepping reports those a requests' gaps one by one, as
        `ends[j] - ends[j - 1]` (`start` for j = 0), and so does this, in the same order."""
        k = len(durations)
        self.num_steps += k
        for d in durations:  # one at a time, as record_step would: bit-identical sums
            self.busy_time += d
        if not allocated:
            self._itl_values.extend(durations)
            self._itl_weights.extend([float(num_seqs)] * k)
        else:
            values, weights = self._itl_values, self._itl_weights
            done = 0
            for j, a in allocated:
                values.extend(durations[done:j])
                weights.extend([float(num_seqs)] * (j - done))
                if num_seqs > a:
                    values.append(durations[j])
                    weights.append(float(num_seqs - a))
                gap = ends[j] - (start if j == 0 else ends[j - 1])
                values.extend([gap] * a)
                weights.extend([1.0] * a)
                done = j + 1
            values.extend(durations[done:])
            weights.extend([float(num_seqs)] * (k - done))
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

    def itl_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Inter-token gaps and their weights (value i occurs weights[i] times)."""
        if not len(self._itl_values):
            return np.zeros(0), np.zeros(0)
        return np.frombuffer(self._itl_values, dtype=np.float64), np.frombuffer(self._itl_weights, dtype=np.float64)

    def summary(self, requests, extra: dict | None = None, *, partial: bool = False) -> dict:
        """metrics.json of the run. `requests`: the workload's requests or just their number.
        `partial`: the run was cut short, so some requests are neither finished nor rejected."""
        st = self.scheduler.stats
        num_requests = requests if isinstance(requests, int) else len(requests)
        c = self.log.columns()
        ok = c["finished"]
        if not partial and num_requests and len(self.log) != num_requests:
            raise RuntimeError(f"{num_requests - len(self.log)} requests neither finished nor rejected")
        start = float(c["spec_arrival"].min()) if len(self.log) else 0.0
        end = float(c["finish_time"][ok].max()) if ok.any() else start
        if partial and len(self.timeline.time):
            end = max(end, self.timeline.time[-1])  # the clock ran on past the last finish
        duration = end - start
        num_done = int(ok.sum())
        out_tokens = int(c["output_tokens"][ok].sum())
        in_tokens = int(c["prompt_tokens"][ok].sum())
        ttft = c["ttft"][ok]
        e2e = c["e2e"][ok]
        tpot = c["tpot"][ok]
        tpot = tpot[~np.isnan(tpot)]
        itl_v = np.frombuffer(self._itl_values, dtype=np.float64) if len(self._itl_values) else np.zeros(0)
        itl_w = np.frombuffer(self._itl_weights, dtype=np.float64) if len(self._itl_weights) else np.zeros(0)
        rate = lambda x: x / duration if duration > 0 else 0.0
        q = st.prefix_cache_queries
        tl = self.timeline
        weights = np.asarray(tl.steps, dtype=np.float64)
        m = {
            "num_requests": num_requests,
            "num_finished": num_done,
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
            "request_throughput_rps": rate(num_done),
            "mean_batch_size": float(np.dot(tl.batch, weights) / weights.sum()) if tl.steps else 0.0,
            "peak_kv_usage": max(tl.kv_usage, default=0.0),
            "ttft_s": summarize(ttft),
            "tpot_s": summarize(tpot),
            "itl_s": summarize(itl_v, itl_w),
            "e2e_s": summarize(e2e),
        }
        if self.log.by_class:
            m["by_priority_class"] = by_priority_class(self.log, c)
        if partial:
            m["num_unfinished"] = num_requests - len(self.log)
        if extra:
            m.update(extra)
        return m


def by_priority_class(log: RequestLog, c: dict) -> dict:
    """Per priority class (highest first: lowest priority value, then name): its requests,
    TTFT and end-to-end latency, and the fraction of its finished requests' prompt tokens that
    hit the cache at first admission."""
    out = {}
    order = sorted(range(len(log.class_names)), key=lambda k: (log.class_priority[k], log.class_names[k]))
    for k in order:
        mine = c["class_index"] == k
        ok = mine & c["finished"]
        prompt = int(c["prompt_tokens"][ok].sum())
        out[log.class_names[k]] = {
            "priority": log.class_priority[k],
            "num_requests": int(mine.sum()),
            "num_finished": int(ok.sum()),
            "cached_token_fraction": int(c["cached_tokens"][ok].sum()) / prompt if prompt else 0.0,
            "ttft_s": summarize(c["ttft"][ok]),
            "e2e_s": summarize(c["e2e"][ok]),
        }
    return out


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def write_metrics(path: Path, metrics: dict) -> None:
    from apcsim.outputs.rundir import write_text_atomic

    write_text_atomic(path, json.dumps(_clean(metrics), indent=2, sort_keys=False) + "\n")


def summary_line(m: dict, *, clock: str, where: str = "") -> str:
    """One line of a run's metrics for the terminal; `clock` says whose seconds they are."""
    c = m["config"]
    ttft = m["ttft_s"]["p50"]
    rejected = f", {m['num_rejected']} rejected" if m["num_rejected"] else ""
    t = m.get("host_tier")
    tier = (f" (host tier: hit rate {t['external_prefix_cache_hit_rate']:.3f}, both {t['combined_prefix_cache_hit_rate']:.3f},"
            f" {t['loads']} loads)" if t else "")
    return (
        f"{c['workload']} policy={c['policy']} block_size={c['block_size']}{where}: "
        f"{m['num_finished']}/{m['num_requests']} finished{rejected}, hit rate {m['prefix_cache_hit_rate']:.3f}{tier}, "
        f"{m['prompt_tokens_computed']} prompt tokens computed, {m['num_preemptions']} preemptions, "
        f"TTFT p50 {'n/a' if ttft is None else f'{ttft:.3f}s'}, {m['output_throughput_tok_s']:.0f} output tok/s "
        f"over {m['duration_s']:.2f}s {clock}"
    )
