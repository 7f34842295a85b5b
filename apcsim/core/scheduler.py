"""The scheduler, in the style of vLLM V1: one token budget per step, running requests first (in
admission order), then the waiting queue in the scheduling policy's order; preemption by
recompute when blocks run out.

It is lazy about decodes so that simulating costs O(events), not O(tokens): a running request in
its decode phase joins the *cohort*, which advances one token per step without being touched.
Such a request is handled one by one again (it becomes *explicit*) only at an event: the step in
which it needs a new block, the step it finishes, a preemption, or a step in which the budget
skipped it. Between events its counters are `anchor + (step - anchor_step)`; `_unanchor` makes
them exact. Deferred effect: a block filled by decoding gets its key at the request's next event
(at most one step later, and always before the request's blocks are freed) instead of the step it
was filled; only a request quoting that request's own still-running output could tell.

Both executors drive it the same way: `schedule(now)` -> plan -> execute -> `update(plan, now)`.
The simulator may also call `quiet_steps()` and `advance(k, now)` to skip k steps in which, by
construction, nothing but the cohort's counters would change.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from operator import attrgetter

from apcsim.core.kv_cache_manager import KVCacheManager, _cdiv
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import Request, Status
from policies.scheduling.base import SchedulerConfig, SchedulingPolicy
from policies.scheduling.preemption import PREEMPTION_CHOOSERS, PREEMPTION_MODES
from policies.types import Clock

_admit_seq = attrgetter("admit_seq")


@dataclass
class SchedulerStats:
    """Counters in vLLM's names. Queries and hits count prompt tokens at a request's first
    admission; a resumed request's lookups are counted apart, as vLLM V1 does."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    preempted_prefix_cache_queries: int = 0
    preempted_prefix_cache_hits: int = 0
    prompt_tokens_computed: int = 0  # prompt positions run through the model, recomputes included
    recomputed_tokens: int = 0  # tokens computed again after a preemption (prompt or output)
    num_preemptions: int = 0
    num_rejected: int = 0
    hash_collisions: int = 0  # verify_tokens: admissions whose lookup stopped at a key collision


@dataclass
class StepResult:
    finished: list[Request] = field(default_factory=list)
    first_tokens: list[Request] = field(default_factory=list)
    itl_samples: list[float] = field(default_factory=list)  # inter-token gaps handled one by one
    num_regular_decodes: int = 0  # cohort tokens whose gap is exactly this step's duration


class Scheduler:
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
        self._explicit: set[Request] = set()
        self._cohort: dict[int, Request] = {}  # admit_seq -> request
        self._cohort_base = 0  # sum over cohort of (anchor tokens - anchor step)
        self._alloc_events: list[tuple[int, int, int, Request]] = []  # (step, seq, version, req)
        self._finish_events: list[tuple[int, int, int, Request]] = []
        self._scheduled: dict[Request, int] = {}  # explicit requests -> new tokens this step
        self._num_cohort_scheduled = 0
        self._prefill_cap = cfg.long_prefill_token_threshold  # this step's (see _long_prefill_cap)

    # -- arrivals ------------------------------------------------------------------------------
    def add_request(self, req: Request, now: float) -> bool:
        """Queue a request, or reject it (False) if it could never run."""
        total = req.prompt_len + req.max_output_tokens
        reason = ""
        if _cdiv(total, self.block_size) > self.kv.pool.num_blocks:
            reason = f"needs {_cdiv(total, self.block_size)} blocks for {total} tokens, the cache has {self.kv.pool.num_blocks}"
        elif self.cfg.max_model_len is not None and total > self.cfg.max_model_len:
            reason = f"{total} tokens exceed max_model_len {self.cfg.max_model_len}"
        elif not self.cfg.chunked_prefill and req.prompt_len > self.cfg.max_num_batched_tokens:
            reason = f"prompt of {req.prompt_len} tokens exceeds max_num_batched_tokens {self.cfg.max_num_batched_tokens} without chunked prefill"
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
        return len(self.kv.get_computed_blocks(r))

    def _computed(self, r: Request) -> int:
        """A running request's exact computed tokens (a cohort member's counter lags)."""
        return r.num_computed_tokens + (self.step - r.anchor_step if r.anchor_step >= 0 else 0)

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.policy) > 0

    # -- lazy cohort ---------------------------------------------------------------------------
    def _anchor(self, r: Request, step: int) -> None:
        """r decodes one token per step from `step` on, lazily, until its next event."""
        self._explicit.discard(r)
        r.anchor_step = step
        r.event_version += 1
        self._cohort[r.admit_seq] = r
        self._cohort_base += r.num_computed_tokens - step
        bs = self.block_size
        alloc_step = step + (-r.num_computed_tokens) % bs  # computed % bs == 0: needs a block
        finish_step = step + r.max_output_tokens - r.num_output_tokens - 1
        heapq.heappush(self._alloc_events, (alloc_step, r.admit_seq, r.event_version, r))
        heapq.heappush(self._finish_events, (finish_step, r.admit_seq, r.event_version, r))

    def _unanchor(self, r: Request, step: int) -> None:
        """Make r's counters exact as of the start of `step` and take it out of the cohort."""
        del self._cohort[r.admit_seq]
        self._cohort_base -= r.num_computed_tokens - r.anchor_step
        k = step - r.anchor_step
        if k > 0:
            r.num_computed_tokens += k
            r.num_output_tokens += k
            r.last_token_time = self.last_end_time if step == self.step else r.last_token_time
        r.anchor_step = -1
        r.event_version += 1
        self.kv.cache_full_blocks(r, r.num_computed_tokens)  # the deferred keys (see module doc)
        self._explicit.add(r)

    def _pop_events(self, heap: list, upto_step: int) -> list[Request]:
        out = []
        while heap and heap[0][0] <= upto_step:
            _, _, version, r = heapq.heappop(heap)
            if version == r.event_version and r.anchor_step >= 0:
                out.append(r)
        return out

    def _next_event(self, heap: list) -> int | None:
        while heap:
            s, _, version, r = heap[0]
            if version == r.event_version and r.anchor_step >= 0:
                return s
            heapq.heappop(heap)
        return None

    @property
    def cohort_context_sum(self) -> int:
        return self._cohort_base + len(self._cohort) * self.step

    # -- running-list bookkeeping --------------------------------------------------------------
    def _remove_running(self, r: Request) -> None:
        i = bisect_left(self._running_seqs, r.admit_seq)
        del self.running[i]
        del self._running_seqs[i]
        if r.anchor_step >= 0:
            self._unanchor(r, self.step)
        self._explicit.discard(r)

    def _preempt(self, r: Request) -> None:
        self._remove_running(r)
        self.kv.free(r)
        r.computed_high_water = max(r.computed_high_water, r.num_computed_tokens)
        r.num_computed_tokens = 0
        r.status = Status.PREEMPTED
        r.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.policy.readd_preempted(r)

    # -- one step ------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        plan = self._schedule_pass(now)
        preempted = plan.preempted
        while plan.is_empty and plan.preempted:
            # Every request left running preempted itself or stood after one that did (vLLM V1
            # ends the running pass there and skips the waiting queue), so nothing runs: vLLM
            # would spend one empty iteration. The preemptions freed blocks, so plan again in
            # the same step; each pass preempts at least one request, so this ends.
            plan = self._schedule_pass(now)
            preempted = preempted + plan.preempted
        plan.preempted = preempted
        return plan

    def _schedule_pass(self, now: float) -> StepPlan:
        s = self.step
        cfg = self.cfg
        self.clock.now = now
        self.policy.refresh()
        for r in self._pop_events(self._alloc_events, s):
            self._unanchor(r, s)
        self._scheduled = {}
        preempted: list[str] = []
        remaining = cfg.max_num_batched_tokens
        self._prefill_cap = prefill_cap = self._long_prefill_cap()
        last_seq = -1  # admit_seq of the last running request accounted for
        cut_index: int | None = None  # running[cut_index:] is skipped this step
        seqs = self._running_seqs

        for r in sorted(self._explicit, key=lambda q: q.admit_seq):
            if r.status is not Status.RUNNING:
                continue  # preempted earlier in this step
            gap = bisect_left(seqs, r.admit_seq) - bisect_right(seqs, last_seq)  # cohort members before r
            if gap >= remaining:
                cut_index = bisect_right(seqs, last_seq) + max(remaining, 0)
                remaining = 0
                break
            remaining -= gap
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
            tail = len(seqs) - bisect_right(seqs, last_seq)
            if tail > remaining:
                cut_index = len(seqs) - (tail - remaining)
                remaining = 0
            else:
                remaining -= tail
        if cut_index is not None:
            for r in self.running[cut_index:]:
                if r.anchor_step >= 0:
                    self._unanchor(r, s)  # skipped: handled one by one next step
                self._scheduled.pop(r, None)
        self._num_cohort_scheduled = len(self._cohort)

        num_hashed = 0
        if not preempted:
            num_hashed = self._admit_waiting(remaining, now)
        chunks = [
            ScheduledChunk(
                r.request_id, new, r.num_computed_tokens, tuple(r.block_ids),
                r.num_computed_tokens + new >= r.num_tokens,
            )
            for r, new in sorted(self._scheduled.items(), key=lambda kv: kv[0].admit_seq)
            if new > 0
        ]
        return StepPlan(
            step=s, chunks=chunks, num_cohort=self._num_cohort_scheduled,
            cohort_context_sum=self.cohort_context_sum, num_hashed_tokens=num_hashed,
            preempted=preempted, cohort_chunks=self._cohort_chunks,
        )

    def _long_prefill_cap(self) -> int:
        """The step's cap on one request's prefill chunk (0: none). vLLM 0.32 lifts the cap when
        a single request is running or waiting (`long_prefill_solo_uncapped`): nobody to starve."""
        cap = self.cfg.long_prefill_token_threshold
        if cap > 0 and self.cfg.long_prefill_solo_uncapped and len(self.running) + len(self.policy) <= 1:
            return 0
        return cap

    def _fits(self, r: Request, new: int, computed: list) -> bool:
        """Whether the pool can give waiting request r its blocks for `new` tokens now, and with
        `reserve_full_sequence` (vLLM's scheduler_reserve_full_isl) for its whole sequence too."""
        if self.cfg.reserve_full_sequence:
            whole = r.num_tokens - r.num_computed_tokens - len(computed) * self.block_size
            if whole > new and self.kv.can_allocate(r, whole, computed) < 0:
                return False
        return self.kv.can_allocate(r, new, computed) >= 0

    def _admission(self, r: Request, remaining: int):
        """How a waiting request would be admitted with `remaining` budget: (new tokens, budget
        charged, hit blocks), or None if the budget rules say no."""
        cfg = self.cfg
        computed = self.kv.get_computed_blocks(r)
        cached = len(computed) * self.block_size
        new = r.num_tokens - cached
        extra = 0 if cfg.cache_aware_budget else cached  # vLLM 0.6.3 charged the cached tokens
        if computed and not cfg.cache_aware_admission:
            # vLLM 0.6.3 asked for every block of the prompt to be free, cached or not.
            if _cdiv(r.num_tokens, self.block_size) > self.kv.pool.num_free:
                return None
        # Without chunked prefill a prompt goes in whole; a resumed request longer than the budget
        # is the exception (it could never run again otherwise), as vLLM V1 chunks it regardless.
        whole = not cfg.chunked_prefill and r.num_tokens <= cfg.max_num_batched_tokens
        if whole:
            if new + extra > remaining:
                return None
        else:
            if self._prefill_cap > 0:
                new = min(new, self._prefill_cap)
            # Charged cached tokens may eat the whole budget; the request still computes at least
            # one token so that every admission makes progress.
            new = min(new, max(remaining - extra, 1))
            return new, min(new + extra, remaining), computed
        return new, new + extra, computed

    def _admit_waiting(self, remaining: int, now: float) -> int:
        cfg = self.cfg
        stats = self.stats
        num_hashed = 0
        while len(self.policy) and remaining > 0 and len(self.running) < cfg.max_num_seqs:
            r = self.policy.peek()
            plan = self._admission(r, remaining)
            if plan is None:
                break
            new, charged, computed = plan
            if not self._fits(r, new, computed) or not self.kv.allocate_slots(r, new, computed):
                break
            self.policy.pop()
            if self.kv.enable_caching:
                num_hashed += r.num_tokens  # with caching off nothing is hashed or looked up
            cached = len(computed) * self.block_size
            if r.lookup_collided:
                stats.hash_collisions += 1
                r.lookup_collided = False
            # vLLM counts a lookup only when prefix caching is on (record_prefix_cache_stats).
            counts = self.kv.enable_caching
            if r.num_cached_tokens < 0:
                r.num_cached_tokens = cached
                r.first_scheduled_time = now
                if counts:
                    stats.prefix_cache_queries += r.prompt_len
                    stats.prefix_cache_hits += cached
                if self.future is not None:
                    self.future.consume(r.index)
            elif counts:
                stats.preempted_prefix_cache_queries += r.num_tokens
                stats.preempted_prefix_cache_hits += cached
            r.status = Status.RUNNING
            r.admit_seq = self._admit_counter
            self._admit_counter += 1
            self.running.append(r)
            self._running_seqs.append(r.admit_seq)
            self._explicit.add(r)
            self._scheduled[r] = new
            remaining -= charged
        return num_hashed

    def _cohort_chunks(self) -> list[ScheduledChunk]:
        """The cohort of the step just planned, one chunk each (for executors that need tables)."""
        out = []
        s = self.step
        for r in self._cohort.values():
            c = r.num_computed_tokens + s - r.anchor_step
            out.append(ScheduledChunk(r.request_id, 1, c, tuple(r.block_ids), True))
        return out

    def update(self, plan: StepPlan, now: float) -> StepResult:
        """Apply the step's results: tokens computed, tokens sampled, requests finished."""
        s = self.step
        assert plan.step == s, f"update for step {plan.step} while at step {s}"
        self.clock.now = now  # finished requests release their blocks at this time
        res = StepResult(num_regular_decodes=self._num_cohort_scheduled)
        stats = self.stats
        finishing: list[Request] = []
        for r, new in self._scheduled.items():
            c = r.num_computed_tokens
            prompt = r.prompt_len
            if c < prompt:
                stats.prompt_tokens_computed += min(c + new, prompt) - c
            stats.recomputed_tokens += max(0, min(c + new, r.computed_high_water) - c)
            r.num_computed_tokens = c + new
            if r.num_computed_tokens < r.num_tokens:
                continue  # a prefill chunk that does not end the prompt samples nothing
            r.num_output_tokens += 1
            if r.first_token_time < 0:
                r.first_token_time = now
                res.first_tokens.append(r)
            else:
                res.itl_samples.append(now - r.last_token_time)
            r.last_token_time = now
            if r.num_output_tokens >= r.max_output_tokens:
                finishing.append(r)
            else:
                self._anchor(r, s + 1)
        self.step = s + 1
        self.last_end_time = now
        for r in self._pop_events(self._finish_events, s):
            self._unanchor(r, s + 1)
            r.last_token_time = now
            finishing.append(r)
        # vLLM frees the requests that end in a step in its running order (update_from_output
        # walks the step's num_scheduled_tokens), and that order is the order their blocks enter
        # the free queue: it decides which of them is evicted first.
        finishing.sort(key=_admit_seq)
        for r in finishing:
            self._finish(r, now, res)
        self._scheduled = {}
        return res

    def _finish(self, r: Request, now: float, res: StepResult) -> None:
        self._remove_running(r)
        self.kv.free(r)
        r.status = Status.FINISHED
        r.finish_time = now
        r.release_outputs()
        res.finished.append(r)

    # -- skipping quiet stretches (simulator only) ----------------------------------------------
    def quiet_steps(self) -> int:
        """How many steps from now on would only advance the cohort: no chunk, no allocation, no
        finish, no admission. 0 if the next step has anything else to do."""
        if self._explicit or not self._cohort:
            return 0
        if len(self.policy) and len(self.running) < self.cfg.max_num_seqs:
            self.policy.refresh()
            head = self.policy.peek()
            self._prefill_cap = self._long_prefill_cap()
            plan = self._admission(head, self.cfg.max_num_batched_tokens - len(self._cohort))
            if plan is not None and self._fits(head, plan[0], plan[2]):
                return 0  # the head of the queue would be admitted
        bounds = [e for e in (self._next_event(self._alloc_events), self._next_event(self._finish_events)) if e is not None]
        return max(0, min(bounds) - self.step) if bounds else 0

    def advance(self, k: int, now: float) -> None:
        """Skip k quiet steps (see `quiet_steps`); `now` is the end time of the last of them."""
        assert k > 0 and not self._explicit, "advance() outside a quiet stretch"
        self.step += k
        self.last_end_time = now

    # -- invariants ----------------------------------------------------------------------------
    def verify(self) -> None:
        """Check the scheduler's and the pool's invariants (call between steps)."""
        pool = self.kv.pool
        pool.verify()
        assert self._running_seqs == [r.admit_seq for r in self.running], "running order broken"
        assert set(self._cohort.values()) | self._explicit == set(self.running), "running != cohort + explicit"
        assert not (set(self._cohort.values()) & self._explicit), "a request is both cohort and explicit"
        base = 0
        refs: dict[int, int] = {}
        for r in self.running:
            assert r.status is Status.RUNNING
            c = r.num_computed_tokens
            if r.anchor_step >= 0:
                base += c - r.anchor_step
                c += self.step - r.anchor_step
            assert len(r.block_ids) == _cdiv(c, self.block_size), f"{r.request_id}: {len(r.block_ids)} blocks for {c} tokens"
            for b in r.block_ids:
                refs[b] = refs.get(b, 0) + 1
        assert base == self._cohort_base, "cohort context bookkeeping drifted"
        for b in pool.blocks:
            assert b.ref_cnt == refs.get(b.block_id, 0), f"block {b.block_id}: ref {b.ref_cnt} != holders {refs.get(b.block_id, 0)}"
        for r in self.policy:
            assert not r.block_ids and r.num_computed_tokens == 0, f"waiting {r.request_id} holds blocks"
