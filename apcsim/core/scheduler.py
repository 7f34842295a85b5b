"""The scheduler, in the style of vLLM V1: one token budget per step, running requests first (in
admission order), then the waiting queue in the scheduling policy's order; preemption by
recompute when blocks run out. It implements `apcsim.core.interface.SchedulerInterface`.

One schedule pass is: the running pass (`_schedule_running`: each running request's chunk,
preempting when blocks run out, cutting off the requests the budget does not reach), admission
(`_admit_waiting`, with the budget rules of `apcsim.core.admission`), and the plan build.

It is lazy about decodes so that simulating costs O(events), not O(tokens): running requests in
their decode phase form the decode cohort (`apcsim.core.cohort`), which advances one token per
step without being touched; every other running request is *explicit*, handled one by one.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import replace
from operator import attrgetter

from apcsim.core.admission import (
    admission_terms,
    fits,
    long_prefill_cap,
    rejection_reason,
    reservation_fits,
)
from apcsim.core.block_table import TableView
from apcsim.core.cohort import DecodeCohort
from apcsim.core.interface import SchedulerInterface, SchedulerStats, StepResult
from apcsim.core.invariants import check_scheduler
from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.loading import HostTierLoading
from apcsim.core.pending_keys import PendingKeys
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import UNSEEN_PREFIX, Request, Status
from apcsim.core.stretch import QuietStretches
from policies.scheduling.base import SchedulerConfig, SchedulingPolicy
from policies.scheduling.preemption import PREEMPTION_CHOOSERS, PREEMPTION_MODES
from policies.types import Clock

__all__ = ["Scheduler", "SchedulerStats", "StepResult"]

_admit_seq = attrgetter("admit_seq")


class Scheduler(HostTierLoading, QuietStretches, SchedulerInterface):
    def __init__(self, cfg: SchedulerConfig, policy: SchedulingPolicy, kv: KVCacheManager, *,
                 clock: Clock | None = None, future=None) -> None:
        """`clock` is shared with the eviction policy (set here at every schedule and update);
        `future` is the offline oracle (`apcsim.core.future`), told of first admissions."""
        if cfg.max_num_batched_tokens < 1 or cfg.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if cfg.max_num_batched_tokens < cfg.max_num_seqs:
            # vLLM refuses this too: every running decode must fit the budget of one step.
            raise ValueError(
                f"max_num_batched_tokens ({cfg.max_num_batched_tokens}) must be >= max_num_seqs ({cfg.max_num_seqs})"
            )
        if cfg.preemption not in PREEMPTION_MODES:
            raise ValueError(f"scheduler.preemption must be one of {', '.join(PREEMPTION_MODES)}, got {cfg.preemption!r}")
        self.cfg = cfg
        self.policy = policy
        self.kv = kv
        self.clock = clock if clock is not None else Clock()
        self.future = future
        chooser = PREEMPTION_CHOOSERS.get(cfg.preemption)
        self._choose_victim = policy.victim if chooser is None else (lambda running: chooser(running, self._computed))
        policy.bind(self._cached_blocks, self.clock, kv.block_size)
        self.block_size = kv.block_size
        self.stats = SchedulerStats()
        self.step = 0
        self.last_end_time = 0.0
        self.running: list[Request] = []  # admission order
        self._running_seqs: list[int] = []  # their admit_seq, sorted, for bisect
        self._admit_counter = 0
        self._explicit: set[Request] = set()  # running requests not in the cohort
        self.cohort = DecodeCohort(kv.block_size)
        # Full blocks keyed late (apcsim.core.pending_keys); `_lazy` says whether this run may,
        # decided at the first schedule (once the host tier is in place), and
        # `kv.key_blocks(r, num_tokens)`, which keys r's full blocks (prompt blocks at allocation,
        # filled decode blocks at the request's next event), does so accordingly: now
        # (`kv.cache_full_blocks`) or pending (`pending_keys.defer`).
        self.pending_keys = PendingKeys(kv)
        self._lazy: bool | None = None
        self._scheduled: dict[Request, int] = {}  # explicit requests -> new tokens this step
        self._num_cohort_scheduled = 0
        # How many of `_scheduled` are cohort members at a block boundary that stay in the cohort
        # (`_boundaries_stay`): `update` passes their boundary instead of rejoining them.
        self._num_staying = 0
        # The host KV tier (apcsim.core.host_tier; set by apcsim.core.build when cpu_tier is on)
        # and the requests whose load from it is in flight -> the step that issued it: they hold
        # blocks, are neither waiting in the policy's queue nor running (vLLM's
        # WAITING_FOR_REMOTE_KVS), and resume at the front of the waiting queue a step later.
        self.host_tier = None
        self.loading: dict[Request, int] = {}

    # -- arrivals ------------------------------------------------------------------------------
    def add_request(self, req: Request, now: float) -> bool:
        reason = rejection_reason(self.cfg, self.kv, req)
        req.arrival_time = now
        if reason:
            req.status, req.rejected_reason = Status.REJECTED, reason
            self.stats.num_rejected += 1
            return False
        req.status = Status.WAITING
        self.policy.add(req)
        return True

    def _cached_blocks(self, r: Request) -> int:
        """Leading prompt blocks of a waiting request the cache holds now (the policies' probe)."""
        self._settle_lookup(r)
        return len(self.kv.get_computed_blocks(r))

    def _settle_lookup(self, r: Request) -> None:
        """Before a lookup of waiting request r: key the pending blocks its walk would reach."""
        # Nothing is ever pending unless `_lazy`; an unseen prefix's walk ends before any
        # pending range's parent (every parent is a block's key: `PendingKeys.defer`).
        if self.pending_keys and r.hit_memo is not UNSEEN_PREFIX:
            self.pending_keys.settle_lookup(r)

    def _computed(self, r: Request) -> int:
        """A running request's exact computed tokens (a cohort member's counter lags)."""
        return r.num_computed_tokens + (self.step - r.anchor_step if r.anchor_step >= 0 else 0)

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.policy) > 0 or bool(self.loading)

    @property
    def cohort_context_sum(self) -> int:
        return self.cohort.context_sum(self.step)

    # -- cohort membership and the running list ------------------------------------------------
    def _leave_cohort(self, r: Request, step: int) -> None:
        """Make r exact as of the start of `step` and handle it one by one from now on."""
        self.cohort.leave(r, step, self.last_end_time if step == self.step else r.last_token_time)
        self.kv.key_blocks(r, r.num_computed_tokens)  # the deferred keys (see cohort's doc)
        self._explicit.add(r)

    def _remove_running(self, r: Request) -> None:
        i = bisect_left(self._running_seqs, r.admit_seq)
        del self.running[i]
        del self._running_seqs[i]
        if r.anchor_step >= 0:
            self._leave_cohort(r, self.step)
        self._explicit.discard(r)

    def _preempt(self, r: Request) -> None:
        self._remove_running(r)
        r.computed_high_water = max(r.computed_high_water, r.num_computed_tokens)
        self._requeue(r)

    def _requeue(self, r: Request) -> None:
        """Preemption by recompute of a request that is neither running nor waiting any more:
        its blocks go back to the pool and it waits again, from token 0."""
        self.pending_keys.free(r)
        r.num_computed_tokens = 0
        r.status = Status.PREEMPTED
        r.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.policy.readd_preempted(r)

    def drop_cohort_tables(self) -> None:
        self.cohort.drop_tables()

    # -- one step ------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        if self._lazy is None:
            self._lazy = self.pending_keys.usable(self.host_tier)
            if self._lazy:
                self.kv.key_blocks = self.pending_keys.defer
        if self.host_tier is not None:
            self.host_tier.begin_step()
        plan = self._schedule_pass(now)
        if plan.is_empty and self.loading and not self.running:
            plan = self._unload_stuck(now)
        preempted = plan.preempted
        while plan.is_empty and plan.preempted:
            # Every request left running preempted itself or stood after one that did (vLLM V1
            # ends the running pass there and skips the waiting queue), so nothing runs: vLLM
            # would spend one empty iteration. The preemptions freed blocks, so plan again in
            # the same step; each pass preempts at least one request, so this ends.
            plan = self._schedule_pass(now)
            preempted = preempted + plan.preempted
        if preempted is not plan.preempted:
            plan = replace(plan, preempted=preempted)
        return plan

    def _schedule_pass(self, now: float) -> StepPlan:
        s = self.step
        self.clock.now = now
        self.policy.refresh()
        boundary = self.cohort.pop_alloc_events(s)
        self._scheduled = {}
        self._num_staying = 0
        prefill_cap = long_prefill_cap(self.cfg, len(self.running) + len(self.policy))
        stay = bool(boundary) and self._boundaries_stay()
        if stay:
            key_filled = self.kv.key_blocks
            for r in boundary:  # the deferred keys, in event order, as leaving would key them
                if not r.own_pending_range:  # (an own range's end moves at the leave)
                    key_filled(r, r.num_computed_tokens + s - r.anchor_step)
        if not self._explicit and self._boundaries_fit(len(boundary)):
            remaining, preempted = self._schedule_boundaries(boundary, s, stay), []
        elif stay:
            remaining, preempted = self._schedule_running(prefill_cap, boundary)
        else:
            for r in boundary:
                self._leave_cohort(r, s)
            remaining, preempted = self._schedule_running(prefill_cap)
        if stay:  # those that took their block and were neither preempted after it nor cut
            self._num_staying = sum(r.anchor_step >= 0 for r in self._scheduled)
        self._num_cohort_scheduled = len(self.cohort)
        # vLLM V1 skips the waiting queue in a step that preempted.
        num_hashed = 0 if preempted else self._admit_waiting(remaining, now, prefill_cap)
        return self._build_plan(num_hashed, tuple(preempted))

    def _schedule_running(self, prefill_cap: int, boundary: list[Request] = ()) -> tuple[int, list[str]]:
        """The running pass: a chunk for each explicit request in admission order, a token for
        each cohort member between them, preempting when blocks run out. Whoever the budget does
        not reach, from the first such request on, is skipped this step. Returns the budget
        left and the requests preempted.

        `boundary`: cohort members at a block boundary that stay in the cohort
        (`_boundaries_stay`, their filled blocks keyed already). Each is met in its admission
        place, as if explicit, and takes its block there if the pool has one (what
        `allocate_slots(r, 1)` does then); if not, it leaves the cohort there and allocates as
        an explicit request, preempting."""
        preempted: list[str] = []
        remaining = self.cfg.max_num_batched_tokens
        last_seq = -1  # admit_seq of the last running request accounted for
        cut_index: int | None = None  # running[cut_index:] is skipped this step
        seqs = self._running_seqs
        for r in sorted([*self._explicit, *boundary], key=_admit_seq):
            if r.status is not Status.RUNNING:
                continue  # preempted earlier in this step
            gap = bisect_left(seqs, r.admit_seq) - bisect_right(seqs, last_seq)  # cohort members before r
            if gap >= remaining:
                cut_index = bisect_right(seqs, last_seq) + max(remaining, 0)
                remaining = 0
                break
            remaining -= gap
            if r.anchor_step >= 0:  # a boundary member (a token, and the budget has one left)
                if self._stay_at_boundary(r):
                    self._scheduled[r] = 1
                    remaining -= 1
                    last_seq = r.admit_seq
                    continue
                self._leave_cohort(r, self.step)  # no block free: handled as explicit, preempting
            new = r.num_tokens - r.num_computed_tokens
            if prefill_cap > 0:
                new = min(new, prefill_cap)
            new = min(new, remaining)
            while not self.kv.allocate_slots(r, new):
                victim = self._choose_victim(self.running)
                refund = self._scheduled.pop(victim, 0)
                if victim.anchor_step >= 0 and victim.admit_seq < r.admit_seq:
                    refund = 1  # a cohort member before r had been given its token already
                remaining += refund
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is r:
                    break
            if r.status is not Status.RUNNING:
                cut_index = bisect_right(seqs, r.admit_seq)  # vLLM stops at a self-preemption
                break
            self._scheduled[r] = new
            remaining -= new
            last_seq = r.admit_seq
        if cut_index is None:
            tail = len(seqs) - bisect_right(seqs, last_seq)  # cohort members after the last explicit
            if tail > remaining:
                cut_index = len(seqs) - (tail - remaining)
                remaining = 0
            else:
                remaining -= tail
        if cut_index is not None:
            for r in self.running[cut_index:]:
                if r.anchor_step >= 0:
                    self._leave_cohort(r, self.step)  # skipped: handled one by one next step
                self._scheduled.pop(r, None)
        return remaining, preempted

    def _admit_waiting(self, remaining: int, now: float, prefill_cap: int) -> int:
        """Admit from the waiting queue, in the policy's order, while the budget, `max_num_seqs`
        and the pool allow; stop at the first request that does not fit. Returns the tokens
        hashed and looked up."""
        cfg, kv = self.cfg, self.kv
        num_hashed = 0
        tier = self.host_tier
        if self.loading:
            remaining, blocked = self._resume_loaded(remaining, prefill_cap)
            if blocked:
                return 0
        while len(self.policy) and remaining > 0 and len(self.running) < cfg.max_num_seqs:
            r = self.policy.peek()
            self._settle_lookup(r)
            terms = admission_terms(cfg, kv, r, remaining, prefill_cap)
            if terms is None:
                break
            new, charged, computed = terms
            if tier is not None:
                hits = tier.load_plan(kv, r, computed)
                if hits:
                    if not fits(cfg, kv, r, new, computed) or not self._admit_loading(r, computed, hits, now):
                        break
                    num_hashed += r.num_tokens
                    continue
            # `fits`, its pool check for `new` tokens left to allocate_slots (which changes
            # nothing when the pool cannot give them)
            if not reservation_fits(cfg, kv, r, new, computed):
                break
            if not kv.allocate_slots(r, new, computed):
                break
            if tier is not None:
                tier.admitted_without_load(r, len(computed))
            if kv.enable_caching:
                num_hashed += r.num_tokens  # with caching off nothing is hashed or looked up
            self._take_admitted(r, len(computed), now)
            self._start_running(r, new)
            remaining -= charged
        return num_hashed

    def _take_admitted(self, r: Request, num_gpu_hits: int, now: float) -> bool:
        """The head of the waiting queue was admitted (the pool gave its blocks; running or, from
        apcsim.core.loading, loading): it leaves the queue and its lookup is counted, vLLM's way:
        at its first admission, or as a preempted request's. Returns whether it was the first."""
        self.policy.pop()
        stats = self.stats
        if r.lookup_collided:
            stats.hash_collisions += 1
            r.lookup_collided = False
        cached = num_gpu_hits * self.block_size
        # vLLM counts a lookup only when prefix caching is on (record_prefix_cache_stats).
        counts = self.kv.enable_caching
        if r.num_cached_tokens < 0:
            r.num_cached_tokens = r.num_computed_tokens  # its GPU hits, and host hits it loads
            r.first_scheduled_time = now
            if counts:
                stats.prefix_cache_queries += r.prompt_len
                stats.prefix_cache_hits += cached
            if self.future is not None:
                self.future.consume(r.index)
            return True
        if counts:
            stats.preempted_prefix_cache_queries += r.num_tokens
            stats.preempted_prefix_cache_hits += cached
        return False

    def _start_running(self, r: Request, new: int) -> None:
        r.status = Status.RUNNING
        r.admit_seq = self._admit_counter
        self._admit_counter += 1
        self.running.append(r)
        self._running_seqs.append(r.admit_seq)
        self._explicit.add(r)
        self._scheduled[r] = new

    def _build_plan(self, num_hashed: int, preempted: tuple[str, ...]) -> StepPlan:
        # `_scheduled` is in admission order already: the running pass walks in that order and
        # admissions get the next admit_seq. Boundary members that stay in the cohort are priced
        # with it (a one-token chunk costs what a member of the same context costs).
        chunks = tuple([
            ScheduledChunk(r.spec.request_id, new, r.num_computed_tokens, TableView(r.block_ids),
                           r.num_computed_tokens + new >= r.num_tokens)
            for r, new in self._scheduled.items()
            if new > 0 and r.anchor_step < 0
        ])
        cohort = self.cohort
        transfers = self.host_tier.take_transfers() if self.host_tier is not None else None
        return StepPlan(self.step, chunks, self._num_cohort_scheduled, cohort.context_sum(self.step), num_hashed,
                        preempted, cohort.snapshot() if len(cohort) else None, transfers)

    def update(self, plan: StepPlan, now: float) -> StepResult:
        s = self.step
        assert plan.step == s, f"update for step {plan.step} while at step {s}"
        self.clock.now = now  # finished requests release their blocks at this time
        res = StepResult(num_regular_decodes=self._num_cohort_scheduled - self._num_staying)
        stats = self.stats
        # No block was allocated since the plan was built: its tables are the joiners' tables.
        # (A cohort without tables reads only a joiner's table length: its own table then.)
        tables = {c.request_id: c.block_ids for c in plan.chunks} if self.cohort.tables else None
        finishing: list[Request] = []
        itl_samples, discard, join = res.itl_samples, self._explicit.discard, self.cohort.join
        prev_end, pass_boundary = self.last_end_time, self.cohort.pass_boundary
        for r, new in self._scheduled.items():
            if r.anchor_step >= 0:
                # A boundary member that stayed in the cohort (`_boundaries_stay`): what a
                # one-token chunk's update does, its gap from its last token (the previous step
                # sampled it unless it joined at this one), then its token goes into the new block.
                c = r.num_computed_tokens + s - r.anchor_step
                if r.computed_high_water > c:
                    stats.recomputed_tokens += min(c + 1, r.computed_high_water) - c
                itl_samples.append(now - (prev_end if s > r.anchor_step else r.last_token_time))
                pass_boundary(r, s, now)  # one whose last token this was finishes with the cohort's
                continue
            c = r.num_computed_tokens
            done = c + new
            prompt = r.prompt_len
            if c < prompt:
                stats.prompt_tokens_computed += min(done, prompt) - c
            if r.computed_high_water > c:
                stats.recomputed_tokens += min(done, r.computed_high_water) - c
            r.num_computed_tokens = done
            out = r.num_output_tokens
            if done < prompt + out:  # num_tokens
                continue  # a prefill chunk that does not end the prompt samples nothing
            r.num_output_tokens = out = out + 1
            if r.first_token_time < 0:
                r.first_token_time = now
                res.first_tokens.append(r)
            else:
                itl_samples.append(now - r.last_token_time)
            r.last_token_time = now
            if out >= r.spec.output_len:  # max_output_tokens
                finishing.append(r)
            else:
                discard(r)
                join(r, s + 1, tables[r.spec.request_id] if tables is not None else r.block_ids)
        self.step = s + 1
        self.last_end_time = now
        self._finish_step(s, now, finishing, res)
        self._scheduled = {}
        return res

    def _finish_step(self, s: int, now: float, finishing: list[Request], res: StepResult) -> None:
        """The end of step `s` (the clock at its end `now`, `self.step` moved on): the cohort
        members whose last token it sampled join `finishing` (the explicit requests that ended),
        and all of them finish."""
        for r in self.cohort.pop_finish_events(s):
            self._leave_cohort(r, s + 1)
            r.last_token_time = now
            finishing.append(r)
        # vLLM frees the requests that end in a step in its running order (update_from_output
        # walks the step's num_scheduled_tokens), and that order is the order their blocks enter
        # the free queue: it decides which of them is evicted first.
        finishing.sort(key=_admit_seq)
        for r in finishing:
            self._finish(r, now, res)

    def _finish(self, r: Request, now: float, res: StepResult) -> None:
        self._remove_running(r)
        self.pending_keys.free(r, finished=True)
        r.status = Status.FINISHED
        r.finish_time = now
        r.release_outputs()
        res.finished.append(r)

    def verify(self) -> None:
        """Check the scheduler's, the cohort's and the pool's invariants (call between steps)."""
        check_scheduler(self)
