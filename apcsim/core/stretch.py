"""Skipping quiet stretches (simulator only): the scheduler's half of `SimPyExecutor`'s skip.

Also, for every driver, the decode block boundaries of a stepped step with no explicit request,
scheduled in one go (`_schedule_boundaries`): the stepped twin of an allocating stretch's.

A quiet stretch is a run of steps in which only the decode cohort runs: no explicit request, no
admission, no finish, no preemption. The executor asks `quiet_steps` how long it may be, cuts it
at the next arrival (and, for an allocating stretch, at `stretch_fit`), lets the time pass in
one event and calls `advance`. In an allocating stretch the members' decode block boundaries do
not end the stretch: `advance` makes those allocations itself, step by step in the order
stepping would (keys of the filled blocks, then the new blocks in admission order), so the block
ids, keys and evictions are the same as stepping's. Where keying touches nothing an allocation
reads and the free queue is vLLM's, all of a stretch's blocks come from one pool call, handed
out in that same order (`_stretch_blocks_in_one_go`).

A stretch may also end with the step that stopped it, when that step only finishes members
(`finish_closes_stretch`): `advance` skips it too (allocations included) and `finish_stretch`
finishes them as `update` would, so a request's last token costs no plan, no cost-model call
and no SimPy step of its own.

A mixin of `apcsim.core.scheduler.Scheduler`: it reads and writes that class's state.
"""

from __future__ import annotations

from operator import attrgetter

from apcsim.core.admission import admission_terms, fits, long_prefill_cap
from apcsim.core.interface import StepResult
from apcsim.core.request import Request

_admit_seq = attrgetter("admit_seq")


class QuietStretches:
    def quiet_steps(self, *, allocating: bool = False) -> int:
        """See `SchedulerInterface.quiet_steps`. With `allocating`, a member's next block does not
        end the stretch: `advance` allocates it, so only a finish (or an admission) does, and the
        driver cuts the stretch to what the pool can serve with `stretch_fit`. Not while a waiting
        request could be admitted by a later step: evictions may change its prefix hit, and with it
        whether it fits, so each allocation step is then stepped."""
        if self._explicit or not len(self.cohort) or self._tier_busy():
            return 0
        # A host tier's write-back store of an evicted block belongs to the step that evicts it
        # (it sets that step's time), so with a tier every allocating step is stepped.
        allocating = allocating and self.host_tier is None
        head_waits = self._head_considered()
        if head_waits:
            self.policy.refresh()
            head = self.policy.peek()
            self._settle_lookup(head)
            cap = long_prefill_cap(self.cfg, len(self.running) + len(self.policy))
            terms = admission_terms(self.cfg, self.kv, head, self.cfg.max_num_batched_tokens - len(self.cohort), cap)
            if terms is not None and fits(self.cfg, self.kv, head, terms[0], terms[2]):
                return 0  # the head of the queue would be admitted
        if allocating and not head_waits:
            event = self.cohort.next_finish_step()  # a member always has one
        else:
            event = self.cohort.next_event_step()
        return max(0, event - self.step) if event is not None else 0

    def finish_closes_stretch(self, k: int) -> bool:
        """Whether step `self.step + k`, the one after the k steps `quiet_steps(allocating=True)`
        gave, may run as the stretch's last step (`advance`, then `finish_stretch`): members
        sample their last tokens in it, and its schedule is the cohort's alone, the same as a
        quiet step's. That holds when nobody is explicit, the budget reaches every member, no host
        tier is involved, and the waiting queue's head is not considered (the queue is empty, or
        `max_num_seqs` are running until the step's update frees a slot). The pool must have
        the step's new blocks too (`stretch_fit` over the stretch with that step)."""
        if self._explicit or not len(self.cohort) or not self._boundaries_fit(0):
            return False
        if self._head_considered():
            return False  # the step would look at the head of the queue (and maybe admit it)
        return self.cohort.next_finish_step() == self.step + k

    def _head_considered(self) -> bool:
        """Whether a step's schedule looks at the waiting queue's head: someone waits and fewer
        than `max_num_seqs` run."""
        return bool(len(self.policy)) and len(self.running) < self.cfg.max_num_seqs

    def finish_stretch(self, now: float) -> StepResult:
        """The update of a stretch's closing step (`finish_closes_stretch`), just skipped by
        `advance` and ending at `now`: its members whose last token it sampled finish, as
        `update` finishes them. Returns them in `finished` (the gaps and the step's row are the
        stretch's: `MetricsCollector.record_stretch`)."""
        res = StepResult()
        self.clock.now = now  # finished requests release their blocks at this time
        self._finish_step(self.step - 1, now, [], res)
        return res

    def stretch_fit(self, m: int) -> int:
        """How many of the next `m` steps of an allocating stretch (`quiet_steps(allocating=True)`)
        the pool has blocks for. Each allocation takes one block and nothing is freed within a
        stretch, so they all succeed until the pool is empty; the step whose allocations would
        find it empty may preempt, and ends the stretch (it is stepped)."""
        free = self.kv.pool.num_free
        bs = self.block_size
        if len(self.cohort) * -(-m // bs) <= free:
            return m  # a member allocates at most once every block_size steps: the pool has enough
        end = self.step + m  # steps < end
        starts = self.cohort.alloc_steps_before(end)
        if len(starts) > free:
            return sorted(starts)[free] - self.step
        # A member that allocates at step t needs its next block at t + block_size: count them
        # first, and list the steps only when the pool runs out within the stretch.
        if sum((end - t0 + bs - 1) // bs for t0 in starts) <= free:
            return m
        steps = sorted(t for t0 in starts for t in range(t0, end, bs))
        return steps[free] - self.step

    def advance(self, k: int, now: float, step_ends=None) -> list[tuple[int, int]]:
        """Skip k quiet steps ending at `now`. `step_ends` (the k steps' end times) is given for an
        allocating stretch (`quiet_steps(allocating=True)`, cut by `stretch_fit`): the members'
        block allocations in it are made here, step by step, exactly as stepping would make them.
        Returns (step offset, members that allocated) for each step that had any: those members
        sampled their token as one-by-one decodes (their inter-token gap is reported alone)."""
        assert k > 0 and not self._explicit, "advance() outside a quiet stretch"
        done: list[tuple[int, int]] = []
        if step_ends is not None and (bulk := self._stretch_blocks_in_one_go(k, step_ends)) is not None:
            done = bulk
        elif step_ends is not None:
            s0, cohort = self.step, self.cohort
            # One step at a time: a member that allocates rejoins with its next block due
            # block_size steps later, maybe still inside the stretch.
            while (group := cohort.take_alloc_group(s0 + k)) is not None:
                step, members = group
                j = step - s0
                start = self.last_end_time if j == 0 else float(step_ends[j - 1])
                self._allocate_decode_blocks(members, step, start, float(step_ends[j]))
                done.append((j, len(members)))
        self.step += k
        self.last_end_time = now
        return done

    def _stretch_blocks_in_one_go(self, k: int, step_ends) -> list[tuple[int, int]] | None:
        """`advance`'s allocations for all k steps at once, where that gives what stepping gives;
        returns what `advance` returns, or None where it does not hold (`advance` then goes step
        by step). It holds when
        - the pending keys are in use and every member with a boundary in the stretch holds its
          pending range: keying its filled blocks (`defer`) then only moves the range's end, and
          touches nothing an allocation reads;
        - the policy is vLLM's plain free queue (`plain_free_queue`): it hands out blocks in the
          same order in one call as in many, whatever the clock says (nothing is freed within a
          stretch, and nobody looks at the pool until it ends);
        - the cohort keeps no tables (a member is then what the last of its boundaries' moves
          leaves: one `pass_boundary` at it stands for all; the earlier ones' events were taken).
        The blocks go to the boundaries in stepping's order (step, then admission order)."""
        if not self._lazy or self.cohort.tables or not self.kv.pool.policy.plain_free_queue:
            return None
        s0, bs, cohort = self.step, self.block_size, self.cohort
        end = s0 + k
        starts = cohort.take_alloc_events_before(end)  # [(step, admit_seq, version, member)]
        if not starts:
            return []
        holds = self.pending_keys.holds
        for entry in starts:
            if not holds(entry[3]):
                cohort.requeue(starts)
                return None
        if starts[0][0] + bs < end:  # a member may pass two boundaries: list them all, in order
            # (a member's next block is due block_size steps after its last; admit_seq is unique,
            # so members are never compared)
            events = sorted([(t, seq, 0, r) for t0, seq, _, r in starts for t in range(t0, end, bs)])
        else:
            events = starts
        stats = self.stats
        last: dict[Request, tuple[int, int]] = {}  # member -> (its last boundary step, its context then)
        done: list[tuple[int, int]] = []
        step, count = events[0][0], 0
        for (t, _, _, r), block in zip(events, self.kv.pool.allocate_ids(len(events))):
            r.block_ids.append(block)
            c = r.num_computed_tokens + t - r.anchor_step  # its tokens before this one (anchor as it was)
            if r.computed_high_water > c:
                stats.recomputed_tokens += min(c + 1, r.computed_high_water) - c
            last[r] = (t, c)
            if t != step:
                done.append((step - s0, count))
                step, count = t, 0
            count += 1
        done.append((step - s0, count))
        key_filled = self.kv.key_blocks  # `defer`, which for a held range only moves its end
        for r, (t, c) in last.items():
            if not r.own_pending_range:  # (an own range's end moves at the leave)
                key_filled(r, c)  # its filled blocks, keyed (pending) as stepping's last boundary keys them
            cohort.pass_boundary(r, t, float(step_ends[t - s0]))
        self.clock.now = float(step_ends[step - s0])  # as stepping leaves it: the last boundary step's end
        return done

    def _boundaries_fit(self, n: int) -> bool:
        """Whether the running pass of a step with no explicit request and `n` cohort members at
        a decode block boundary is the plain one: the budget reaches every running request and
        the pool has a block for each boundary member, so nothing is cut and nobody preempted.
        (With a host tier each allocation's write-back belongs to its own call, and with one-token
        blocks the new block is full at once and keyed by `allocate_slots`: both take the
        general pass.)"""
        return (len(self.running) <= self.cfg.max_num_batched_tokens and n <= self.kv.pool.num_free
                and self.host_tier is None and self.block_size > 1)

    def _schedule_boundaries(self, boundary: list[Request], s: int, stay: bool) -> int:
        """The running pass when `_boundaries_fit`: what `_schedule_running` does then, in one
        go. The boundary members key their filled blocks (in event order) and take one block
        each in admission order with one pool call (the pool hands out the same blocks as one
        call per member: nothing else allocates in between); then they decode one token as
        explicit chunks, having left the cohort (or, with `stay`, staying in it, their filled
        blocks keyed already: `_boundaries_stay`), and every other member decodes in the
        cohort. Returns the budget left."""
        if boundary:
            if not stay:
                cohort, end, key_filled = self.cohort, self.last_end_time, self.kv.key_blocks
                for r in boundary:
                    cohort.leave(r, s, end)
                    key_filled(r, r.num_computed_tokens)  # the deferred keys (see cohort's doc)
            if len(boundary) > 1:
                boundary.sort(key=_admit_seq)
            self.kv.append_decode_blocks(boundary)
            self._scheduled = dict.fromkeys(boundary, 1)
        return self.cfg.max_num_batched_tokens - len(self.running)

    def _boundaries_stay(self) -> bool:
        """Whether this step's cohort members at a block boundary stay in the cohort, scheduled
        for their one token (`_scheduled`) but priced and rejoined as members: a plan prices a
        one-token chunk as a cohort member of the same context, so the step's size, tokens,
        samples and time are the same, and `update` reports their gaps one by one in their
        admission places and passes their boundary (`DecodeCohort.pass_boundary`), as it would
        update those chunks. Only where nobody lists a plan's chunks member by member (a cohort
        without tables), without a host tier (its write-backs belong to each allocation's own
        call) and with blocks of more than one token (a one-token block is full at once)."""
        return not self.cohort.tables and self.host_tier is None and self.block_size > 1

    def _stay_at_boundary(self, r: Request) -> bool:
        """For a boundary member met in the running pass (`_schedule_running`): take its block
        as `allocate_slots(r, 1)` would if the pool has one, and say so; False (nothing done)
        if it has none. Its context c is a multiple of block_size (its token starts a block)."""
        kv = self.kv
        if kv.pool.num_free < 1:
            return False
        c = r.num_computed_tokens + self.step - r.anchor_step
        r.hit_memo = None
        r.block_ids += kv.pool.allocate_ids(1)
        if (c + 1) // self.block_size > r.num_cached_blocks and not r.own_pending_range:
            kv.key_blocks(r, c + 1)
        return True

    def _allocate_decode_blocks(self, members: list[Request], step: int, start: float, end: float) -> None:
        """What stepping does for members whose token at `step` (from `start` to `end`) starts a new
        block, in the same order: each keys its filled block (the cohort's deferred key), then each
        takes a block in admission order (`stretch_fit` made sure the pool has them), then each
        samples its token and stays in the cohort with its new table. A member's context is past
        its prompt, so no prompt token is computed."""
        self.clock.now = start
        kv, cohort, stats = self.kv, self.cohort, self.stats
        key_filled = self.kv.key_blocks
        for r in members:
            if not r.own_pending_range:  # (an own range's end moves at the leave)
                key_filled(r, r.num_computed_tokens + step - r.anchor_step)
        kv.append_decode_blocks(members)
        self.clock.now = end
        for r in members:
            c = r.num_computed_tokens + step - r.anchor_step
            if r.computed_high_water > c:
                stats.recomputed_tokens += min(c + 1, r.computed_high_water) - c
            cohort.pass_boundary(r, step, end)
