"""A cluster's metrics: every single-engine metric over all its requests, then per replica, and
how evenly the router spread the load.

metrics.json keeps the single engine's keys (summed counts; latency percentiles over every
request of the cluster), so sweeps and the one-line summary read a cluster run as any other, and
adds `cluster`: the router, its counters, load imbalance (max / mean over replicas: 1 is even)
and one entry per replica.
"""

from __future__ import annotations

import numpy as np

from apcsim.cluster.simulation import ClusterSimulation
from apcsim.outputs.metrics import Timeline, summarize
from apcsim.outputs.requestlog import RequestLog

SUMMED = ("num_rejected", "prefix_cache_queries", "prefix_cache_hits", "preempted_prefix_cache_queries",
          "preempted_prefix_cache_hits", "prompt_tokens_computed", "recomputed_tokens", "num_preemptions",
          "num_evictions", "num_steps")
PER_REPLICA = ("num_finished", "num_rejected", "prefix_cache_hit_rate", "prompt_tokens", "prompt_tokens_computed",
               "num_preemptions", "num_evictions", "busy_fraction", "peak_kv_usage", "output_throughput_tok_s",
               "ttft_s", "tpot_s", "e2e_s")
FLOAT_COLUMNS = ("spec_arrival", "finish_time", "ttft", "e2e", "tpot")
INT_COLUMNS = ("prompt_tokens", "output_tokens", "cached_tokens")


class ClusterLog:
    """The replicas' request logs read as one (what the report and requests.csv need)."""

    by_class = False  # priority classes are broken down per replica, not merged

    def __init__(self, logs: list[RequestLog]) -> None:
        self.logs = logs
        self.fieldnames = logs[0].fieldnames

    def __len__(self) -> int:
        return sum(len(log) for log in self.logs)

    @property
    def streams(self) -> bool:
        return self.logs[0].streams

    @property
    def rows(self) -> list[dict] | None:
        if self.streams:
            return None
        return [row for log in self.logs for row in log.rows]  # type: ignore[union-attr]

    def columns(self) -> dict[str, np.ndarray]:
        """Every column over all replicas, in workload order (as `RequestLog.columns`)."""
        def raw(name: str, dtype) -> np.ndarray:
            return np.concatenate([np.asarray(getattr(log, name), dtype=dtype) for log in self.logs])

        order = np.argsort(raw("index", np.int64), kind="stable")
        out = {name: raw(name, np.float64)[order] for name in FLOAT_COLUMNS}
        out.update({name: raw(name, np.int64)[order] for name in INT_COLUMNS})
        out["finished"] = raw("finished", np.int8)[order].astype(bool)
        return out


class ClusterCollector:
    """What the run's files are written from: the merged log, an empty cluster-wide timeline
    (a timeline is a replica's), and each replica's timeline for the report's cluster page."""

    def __init__(self, sim: ClusterSimulation) -> None:
        self.log = ClusterLog([loop.metrics.log for loop in sim.loops])
        self.timeline = Timeline()
        self.replica_timelines = [loop.metrics.timeline for loop in sim.loops]


def imbalance(values) -> float:
    """max / mean over replicas (1.0: perfectly even; 0 when nothing was measured)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean()) if v.size else 0.0
    return float(v.max()) / mean if mean > 0 else 0.0


def cluster_summary(sim: ClusterSimulation, extra: dict | None = None, *, partial: bool = False) -> dict:
    loops = sim.loops
    per = [loop.metrics.summary(len(loop.metrics.log), partial=partial) for loop in loops]
    c = ClusterLog([loop.metrics.log for loop in loops]).columns()
    done = len(c["finished"])
    if not partial and done != sim.num_requests:
        raise RuntimeError(f"{sim.num_requests - done} requests neither finished nor rejected")
    ok = c["finished"]
    start = float(c["spec_arrival"].min()) if done else 0.0
    end = float(c["finish_time"][ok].max()) if ok.any() else start
    if partial:
        ends = [t.time[-1] for t in (loop.metrics.timeline for loop in loops) if len(t.time)]
        end = max([end, *ends])
    duration = end - start
    out_tokens = int(c["output_tokens"][ok].sum())
    in_tokens = int(c["prompt_tokens"][ok].sum())
    rate = lambda x: x / duration if duration > 0 else 0.0
    tpot = c["tpot"][ok]
    itl = [loop.metrics.itl_sample() for loop in loops]
    q = sum(p["prefix_cache_queries"] for p in per)
    hits = sum(p["prefix_cache_hits"] for p in per)
    steps = np.concatenate([np.asarray(loop.metrics.timeline.steps, dtype=np.float64) for loop in loops])
    batch = np.concatenate([np.asarray(loop.metrics.timeline.batch, dtype=np.float64) for loop in loops])
    busy = [loop.metrics.busy_time for loop in loops]
    m = {
        "num_requests": sim.num_requests,
        "num_finished": int(ok.sum()),
        **{k: sum(p[k] for p in per) for k in SUMMED[:3]},
        "prefix_cache_hit_rate": hits / q if q else 0.0,
        **{k: sum(p[k] for p in per) for k in SUMMED[3:5]},
        "prompt_tokens": in_tokens,
        "prompt_tokens_computed": sum(p["prompt_tokens_computed"] for p in per),
        "recomputed_tokens": sum(p["recomputed_tokens"] for p in per),
        "output_tokens": out_tokens,
        **{k: sum(p[k] for p in per) for k in SUMMED[7:]},
        "duration_s": duration,
        "busy_fraction": sum(busy) / (len(loops) * duration) if duration > 0 else 0.0,
        "output_throughput_tok_s": rate(out_tokens),
        "total_token_throughput_tok_s": rate(out_tokens + in_tokens),
        "request_throughput_rps": rate(int(ok.sum())),
        "mean_batch_size": float(np.dot(batch, steps) / steps.sum()) if steps.size else 0.0,
        "peak_kv_usage": max(p["peak_kv_usage"] for p in per),
        "ttft_s": summarize(c["ttft"][ok]),
        "tpot_s": summarize(tpot[~np.isnan(tpot)]),
        "itl_s": summarize(np.concatenate([v for v, _ in itl]), np.concatenate([w for _, w in itl])),
        "e2e_s": summarize(c["e2e"][ok]),
    }
    if partial:
        m["num_unfinished"] = sim.num_requests - done
    views = sim.views
    m["cluster"] = {
        "num_replicas": len(loops),
        "router": sim.router.cfg.name,
        "router_stats": sim.router.stats(),
        "load_imbalance": {
            "requests": imbalance([v.requests_routed for v in views]),
            "prompt_tokens": imbalance([v.prompt_tokens_routed for v in views]),
            "busy_time": imbalance(busy),
        },
        "quiet_stretches_cut": sum(ex.num_stretches_cut for ex in sim.executors),
        "replicas": [{"replica": k, "num_gpu_blocks": v.num_blocks, "requests_routed": v.requests_routed, "prompt_tokens_routed": v.prompt_tokens_routed,
                      **{key: p[key] for key in PER_REPLICA}}
                     for k, (v, p) in enumerate(zip(views, per))],
    }
    if extra:
        m.update(extra)
    return m
