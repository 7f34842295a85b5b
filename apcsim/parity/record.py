"""The apcsim side of a parity replay: one simulation, every step recorded.

A step record is what vLLM's scheduler output says of the same step: {request: tokens scheduled}
(the lazy decode cohort expanded), the requests preempted, the requests admitted from the waiting
queue with their prefix hit in tokens, and the prefix-cache counters so far. Quiet-stretch
skipping is off so that every step is a plan. Arrivals are recorded by the step whose schedule
first sees them, in the order the scheduler took them; that is what the vLLM side replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apcsim.config import SimConfig
from apcsim.core.build import make_scheduler
from apcsim.core.plan import StepPlan
from apcsim.core.request import Request
from apcsim.run import build_cost_model, check_some_request_fits, kv_options, num_blocks_for, validate
from apcsim.sim.cost_model import CostModel
from apcsim.sim.simulator import Simulation
from apcsim.workloads import build_workload


@dataclass
class Recording:
    config: dict  # what the vLLM side needs to build the same engine
    requests: dict[str, dict] = field(default_factory=dict)  # id -> prompt, outputs, priority, ...
    arrivals: list[tuple[int, str]] = field(default_factory=list)  # (step, request id), in order
    rejected: list[str] = field(default_factory=list)  # refused by apcsim before scheduling
    steps: list[dict] = field(default_factory=list)

    def replay_input(self) -> dict:
        return {"config": self.config, "requests": self.requests, "arrivals": self.arrivals}


class _RecordingCost:
    """The cost model, plus a look at each plan between schedule and update (the only moment
    the cohort's chunks are valid)."""

    def __init__(self, cost: CostModel, on_plan) -> None:
        self._cost = cost
        self._on_plan = on_plan
        self.name = cost.name

    def step_time(self, plan: StepPlan) -> float:
        self._on_plan(plan)
        return self._cost.step_time(plan)

    def __getattr__(self, name):
        return getattr(self._cost, name)


def vllm_config(cfg: SimConfig, num_gpu_blocks: int, max_len: int) -> dict:
    """The vLLM engine settings that mirror `cfg` (the replay builds vLLM's configs from these)."""
    s = cfg.scheduler
    if s.name not in ("fcfs", "priority"):
        raise ValueError(f"vLLM schedules fcfs or priority; scheduler={s.name} has no vLLM counterpart")
    if s.preemption != "policy":
        raise ValueError(f"scheduler.preemption={s.preemption}: vLLM picks its own victim (use policy)")
    if cfg.policy is not None and cfg.policy.name not in ("lru", "none"):
        raise ValueError(f"vLLM evicts in LRU order; +policy={cfg.policy.name} has no vLLM counterpart")
    if not (s.cache_aware_budget and s.cache_aware_admission):
        raise ValueError("vLLM V1 has no cache-unaware budget or admission (those are the 0.6.3 rules)")
    return {
        "block_size": cfg.block_size,
        "num_gpu_blocks": num_gpu_blocks,
        "enable_prefix_caching": cfg.policy is not None and cfg.policy.name != "none",
        "max_num_seqs": s.max_num_seqs,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "enable_chunked_prefill": s.chunked_prefill,
        "long_prefill_token_threshold": s.long_prefill_token_threshold,
        "scheduler_reserve_full_isl": s.reserve_full_sequence,
        "policy": s.name,
        "max_model_len": s.max_model_len if s.max_model_len is not None else max_len,
        "semantics": cfg.semantics,
    }


def record(cfg: SimConfig) -> Recording:
    """Run `cfg` in the simulator and record its requests and every step."""
    validate(cfg)
    cost = build_cost_model(cfg)
    workload_ss, output_ss = np.random.SeedSequence(cfg.seed).spawn(2)
    specs = build_workload(cfg.workload, vocab_size=cfg.model.vocab_size, seed_seq=workload_ss)
    num_blocks = num_blocks_for(cfg)
    bs = cfg.block_size
    check_some_request_fits(specs, num_blocks, bs, cfg.cache.usable_blocks(num_blocks))
    sched = make_scheduler(cfg.policy, cfg.scheduler, num_blocks=num_blocks, block_size=bs,
                           recompute_cost=lambda depth: cost.recompute_time(bs, depth * bs), specs=specs,
                           kv_options=kv_options(cfg), cache=cfg.cache)
    max_len = max(s.prompt_len + s.output_len for s in specs) + 1
    rec = Recording(config=vllm_config(cfg, num_blocks, max_len))
    running_before: set[str] = set()  # running when the step began (after the last update)
    # The step last planned: while it equals sched.step the step is running (planned, not yet
    # updated), and an arrival now is first seen by the next step's schedule.
    planned = [-1]

    def on_arrival(r: Request, accepted: bool) -> None:
        if not accepted:
            rec.rejected.append(r.request_id)
            return
        rec.arrivals.append((sched.step + (planned[0] == sched.step), r.request_id))
        rec.requests[r.request_id] = {
            "prompt": r.spec.prompt_token_ids.tolist(),
            "outputs": r.output_tokens().tolist(),
            "priority": r.spec.priority,
            "cache_salt": r.spec.cache_salt,
            "arrival_time": r.arrival_time,
        }

    def on_plan(plan: StepPlan) -> None:
        planned[0] = plan.step
        chunks = plan.chunks + plan.cohort_chunks()
        st = sched.stats
        rec.steps.append({
            "step": plan.step,
            "scheduled": {c.request_id: c.num_new_tokens for c in chunks},
            "preempted": list(plan.preempted),
            # Taken from the waiting queue this step (new, or preempted and resumed at once): its
            # context is its prefix hit.
            "admitted": {c.request_id: c.num_context_tokens for c in chunks
                         if c.request_id not in running_before or c.request_id in plan.preempted},
            "counters": [st.prefix_cache_queries, st.prefix_cache_hits,
                         st.preempted_prefix_cache_queries, st.preempted_prefix_cache_hits],
        })

    def on_step(plan: StepPlan, result) -> None:
        running_before.clear()
        running_before.update(r.request_id for r in sched.running)

    sim = Simulation(specs, sched, _RecordingCost(cost, on_plan), max_concurrency=cfg.max_concurrency,
                     output_seed=int(output_ss.generate_state(1)[0]), skip_quiet=False,
                     verify_every_step=cfg.verify, keep_requests=False, on_arrival=on_arrival, on_step=on_step)
    sim.run()
    return rec
