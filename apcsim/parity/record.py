"""The apcsim side of a parity replay: one simulation, every step recorded.

A step record is what vLLM's scheduler output says of the same step: {request: tokens scheduled}
(the lazy decode cohort expanded), the requests preempted, the requests admitted from the waiting
queue with their prefix hit in tokens, and the prefix-cache counters so far. Quiet-stretch
skipping is off so that every step is a plan. Arrivals are recorded by the step whose schedule
first sees them, in the order the scheduler took them; that is what the vLLM side replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apcsim.config import SimConfig
from apcsim.core.plan import StepPlan
from apcsim.core.request import Request
from apcsim.loop import ServingLoop, Waits
from apcsim.run import build_cost_model, build_run, checked_config
from apcsim.sim.cost_model import CostModel
from apcsim.sim.simulator import SimPyExecutor


@dataclass
class Recording:
    config: dict  # what the vLLM side needs to build the same engine
    requests: dict[str, dict] = field(default_factory=dict)  # id -> prompt, outputs, priority, ...
    arrivals: list[tuple[int, str]] = field(default_factory=list)  # (step, request id), in order
    rejected: list[str] = field(default_factory=list)  # refused by apcsim before scheduling
    steps: list[dict] = field(default_factory=list)

    def replay_input(self) -> dict:
        return {"config": self.config, "requests": self.requests, "arrivals": self.arrivals}


class _RecordingExecutor(SimPyExecutor):
    """The simulator's executor, plus a look at each plan as it starts to run (between schedule
    and update, when the prefix-cache counters are this step's)."""

    def __init__(self, cost: CostModel, on_plan) -> None:
        super().__init__(cost, skip_quiet=False)
        self._on_plan = on_plan

    def run_plan(self, plan: StepPlan) -> Waits[float]:
        self._on_plan(plan)
        return (yield from super().run_plan(plan))


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
    cfg = checked_config(cfg)
    cost = build_cost_model(cfg)
    run, specs = build_run(cfg, cost)
    sched, num_blocks = run.scheduler, run.num_blocks
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
            "prompt": r.spec.prompt_token_ids[:].tolist(),
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

    loop = ServingLoop(specs, sched, _RecordingExecutor(cost, on_plan), **run.loop_kw(), keep_requests=False,
                       on_arrival=on_arrival, on_step=on_step)
    loop.run()
    return rec
