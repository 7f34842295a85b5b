"""Host-side work of the serving loop, measured on the real loop, scheduler and executor.

`cpu_step` (by requests in the step): a pure-decode step's time outside the forward pass, as the
engine spends it: `ServingLoop.next_plan` (the scheduler) and `Executor.prepare` (building the
inputs) before the model runs, `Executor.store` and `ServingLoop.complete` (scheduler update,
metrics) after the sampled tokens reach the host. The forward pass with its sampling is timed by
the kernel rows; what is left here is the per-step and per-request cost the cost model adds.

`cpu_hash` (by prompt tokens): the prefix-cache key chain and lookup of one newly arrived prompt
(`KVCacheManager.get_computed_blocks`), which the scheduler pays once per admission.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from apcsim.calibration.decode_buckets import bucket_of
from apcsim.core.build import make_scheduler
from apcsim.core.request import Request, RequestSpec
from apcsim.mathutil import cdiv
from engine.executor import Executor
from engine.model import LlamaForCausalLM
from engine.profiling.grid import ProfileGrid
from engine.runner import EngineLoop
from policies.eviction.base import EvictionConfig
from policies.registry import EVICTION_POLICIES
from policies.scheduling.base import SchedulerConfig

PROMPT_TOKENS = 32  # each request's prompt in the decode-step runs: short, so prefill ends fast
WARM_STEPS = 3  # decode steps run before timing


def _policy(name: str) -> EvictionConfig:
    return EVICTION_POLICIES[name].config_cls()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_step_rows(model: LlamaForCausalLM, ops, grid: ProfileGrid, *, block_size: int, policy: str,
                  seed: int, graph_mode: str | None = None) -> list[dict]:
    """Median host time of a pure-decode step at each batch size of `grid.cpu_batch`, with the
    engine's decode graphs in `graph_mode` (None: eager), whose input copies are host work too."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    steps = WARM_STEPS + grid.cpu_steps
    rows = []
    for b in grid.cpu_batch:
        out_len = steps + 2  # the requests outlive the timed steps: nobody finishes mid-run
        specs = [RequestSpec(f"p{i}", rng.integers(0, cfg.vocab_size, PROMPT_TOKENS, dtype=np.int32), out_len)
                 for i in range(b)]
        num_blocks = b * cdiv(PROMPT_TOKENS + out_len, block_size) + 1
        sched_cfg = SchedulerConfig(name="fcfs", max_num_seqs=max(b, 1), max_num_batched_tokens=max(8192, b))
        scheduler = make_scheduler(_policy(policy), sched_cfg, num_blocks=num_blocks, block_size=block_size,
                                   recompute_cost=lambda depth: 0.0)
        executor = Executor(model, ops, num_blocks=num_blocks, block_size=block_size)
        if graph_mode is not None:
            # Only b's own bucket: the timed steps all decode b requests.
            executor.enable_decode_graphs(graph_mode, max_batch=b, capture_only=[bucket_of(b)],
                                          max_blocks_per_seq=cdiv(PROMPT_TOKENS + out_len, block_size))
        loop = EngineLoop(specs, scheduler, executor, online=False)
        loop.frontend.deliver(0.0)
        host_ms: list[float] = []
        warm = 0
        while not loop.done:
            t0 = time.perf_counter()
            plan = loop.next_plan(t0)
            inp = executor.prepare(plan)
            t1 = time.perf_counter()
            tokens, logits = executor.forward(inp)
            _sync(executor.device)
            t2 = time.perf_counter()
            executor.store(inp, tokens, logits)
            loop.complete(plan, t2, t2 - t1)
            t3 = time.perf_counter()
            decode = not plan.chunks and plan.num_cohort == b
            if decode:
                warm += 1
                if warm > WARM_STEPS and len(host_ms) < grid.cpu_steps:
                    host_ms.append(((t1 - t0) + (t3 - t2)) * 1e3)
        if len(host_ms) < grid.cpu_steps:
            raise RuntimeError(f"cpu_step at batch {b}: {len(host_ms)} pure decode steps, wanted {grid.cpu_steps}")
        rows.append({"op": "cpu_step", "num_tokens": b, "batch_size": b, "context_len": 0,
                     "time_ms_median": statistics.median(host_ms)})
    return rows


def cpu_hash_rows(grid: ProfileGrid, *, block_size: int, policy: str, vocab_size: int, seed: int,
                  repeats: int) -> list[dict]:
    """Median time of the first prefix lookup of a prompt of n tokens, against a cache holding an
    unrelated prompt (so every key is computed and the walk stops at the first miss)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in grid.hash_tokens:
        scheduler = make_scheduler(_policy(policy), SchedulerConfig(name="fcfs"), num_blocks=cdiv(n, block_size) + 1,
                                   block_size=block_size, recompute_cost=lambda depth: 0.0)
        kv = scheduler.kv
        times = []
        for i in range(repeats + 1):
            # A fresh request each time: keys are memoised on the request.
            spec = RequestSpec(f"h{i}", rng.integers(0, vocab_size, n, dtype=np.int32), 1)
            r = Request(spec=spec, index=i)
            t0 = time.perf_counter()
            kv.get_computed_blocks(r)
            times.append((time.perf_counter() - t0) * 1e3)
        rows.append({"op": "cpu_hash", "num_tokens": n, "batch_size": 1, "context_len": 0,
                     "time_ms_median": statistics.median(times[1:])})
    return rows
