"""The scheduler's verbs for requests loading KV from the host tier (apcsim.core.host_tier),
mixed into `apcsim.core.scheduler.Scheduler`: admit a request loading, resume it once its load is
done, and break a deadlock of loaded requests. They read and change the scheduler's state
(`loading`; the running list through `_start_running`; the waiting queue and the stats through
`_take_admitted`, the bookkeeping every admission shares) and are here only to keep the
scheduler's own module about the steps every run takes.
"""

from __future__ import annotations

from dataclasses import replace

from apcsim.core.admission import fits
from apcsim.core.plan import StepPlan
from apcsim.core.request import Request


class HostTierLoading:
    def _tier_busy(self) -> bool:
        """A load or a write-through copy is pending: the next step is not a quiet one (skipping
        it would move the copies to another step)."""
        return bool(self.loading) or (self.host_tier is not None and self.host_tier.has_pending_copies)

    def _admit_loading(self, r: Request, computed: list, hits: list, now: float) -> bool:
        """Admit the head of the queue loading its host hits (see apcsim.core.host_tier); False
        if the pool cannot give the blocks (admission stops, as for any request)."""
        if not self.host_tier.start_load(self.kv, r, computed, hits):
            return False
        if self._take_admitted(r, len(computed), now):
            self.host_tier.count_lookup(r, len(computed), len(hits))
        else:
            self.host_tier.stats.preempted_external_prefix_cache_hits += len(hits) * self.block_size
        self.loading[r] = self.step
        return True

    def _unload_stuck(self, now: float) -> StepPlan:
        """Nothing runs and the loaded requests cannot resume: each holds blocks another needs.
        The newest gives its blocks back and waits again (a preemption by recompute; its host
        copies stay), until a plan is not empty."""
        unloaded: list[str] = []
        plan = None
        while self.loading and (plan is None or plan.is_empty):
            r = next(reversed(self.loading))
            del self.loading[r]
            self._requeue(r)  # no high-water mark: a loading request has computed nothing
            self.host_tier.stats.loads_abandoned += 1
            unloaded.append(r.request_id)
            plan = self._schedule_pass(now)
        return replace(plan, preempted=tuple(unloaded) + plan.preempted)

    def _resume_loaded(self, remaining: int, prefill_cap: int) -> tuple[int, bool]:
        """Requests whose load was issued in an earlier step have it done: they go first, as
        vLLM puts them at the front of the waiting queue. Returns the budget left and whether
        admission stops here (the first that does not fit stops it)."""
        cfg, kv = self.cfg, self.kv
        for r, issued in list(self.loading.items()):
            if issued >= self.step:
                break  # issued in this step (the dict is in issue order)
            if remaining <= 0 or len(self.running) >= cfg.max_num_seqs:
                return remaining, True
            new = r.num_tokens - r.num_computed_tokens
            if cfg.chunked_prefill:
                new = min(new, prefill_cap, remaining) if prefill_cap > 0 else min(new, remaining)
            elif new > remaining:
                return remaining, True
            if not fits(cfg, kv, r, new, []) or not kv.allocate_slots(r, new):
                return remaining, True
            del self.loading[r]
            self._start_running(r, new)
            remaining -= new
        return remaining, False
