"""The lazy decode cohort: why simulating costs O(events), not O(tokens).

A running request in its decode phase *joins* the cohort and then advances one token per step
without being touched. The scheduler takes it out again (it *leaves*, and is handled one by one)
only at an event: the step in which it needs a new block, the step it finishes, a preemption, or
a step in which the budget skipped it.

Invariants (checked by `Scheduler.verify`):
- A member's counters (`num_computed_tokens`, `num_output_tokens`) hold their values at its
  `anchor_step`; at step s its true values are those plus `s - anchor_step`. `leave` makes them
  exact. A request is a member exactly when `anchor_step >= 0`.
- A member's block table does not change while it is a member: its allocation event is the first
  step whose token starts a new block, and the scheduler makes it leave at the start of that
  step, before allocating. So a member's table can be recorded once, when it joins. (Inside a
  skipped quiet stretch `pass_boundary` does that leave, allocation and rejoin in one move,
  recorded in the history as a leave and a join; without tables one call at its last boundary
  in a stretch stands for all of them there.)
- `context_sum(step)` is the members' total context at `step`: `base + len * step`, where `base`
  is the sum over members of (context at anchor - anchor step), kept as members join and leave.
- The event heaps are lazy: an entry is (step, admit_seq, version, request), dropped when it
  surfaces if it no longer counts. An allocation entry counts while `version ==
  request.event_version` and the request is a member; every join and leave bumps that version,
  so entries of an earlier membership are dropped. A member's finish step survives a leave and
  rejoin at a block boundary (it decodes the same token either way), so its finish entry does
  too: a finish entry counts while it is `request.finish_entry` (the entry `join` queued last,
  None once it surfaced) and the request is a member, and `join` queues a new one only when the
  finish step or admit_seq moved. Either way a member's live entries come out in (step,
  admit_seq) order, as if every join had queued its own.
- `snapshot()` is O(1) and stays valid forever (see `apcsim.core.plan.CohortHistory`): every join
  and leave appends one change, and a new history starts once the changes outnumber the members,
  so the copy it makes is amortized O(1) per change.

Without tables (`drop_tables`, before the first join: a simulation whose plans nobody lists
member by member), a member is only its anchor context, anchor step and table length, kept in
no particular order, and there is no history: plans carry `UNTRACKED`, whose members cannot be
listed. Every join, leave and boundary then writes one small tuple (a boundary in a quiet
stretch wrote a table view, a member record, two history changes and now and then a copy of
the membership).

Deferred effect (the scheduler's, at `leave`): a block filled by decoding gets its key at the
request's next event (at most one step later, and always before the request's blocks are freed)
instead of the step it was filled; only a request quoting that request's own still-running
output could tell.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from apcsim.core.block_table import TableView
from apcsim.core.plan import UNTRACKED, CohortHistory, CohortMember, CohortSnapshot
from apcsim.core.request import Request

_MIN_HISTORY = 64  # changes kept before a new history may start, so small cohorts copy rarely


class DecodeCohort:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._members: dict[int, tuple] = {}  # admit_seq -> CohortMember's fields, in join order
        self._base = 0  # sum over members of (anchor context - anchor step)
        self._alloc_events: list[tuple[int, int, int, Request]] = []  # (step, seq, version, req)
        self._finish_events: list[tuple[int, int, int, Request]] = []
        self._history = CohortHistory({})
        self.tables = True  # members keep their block tables and the history (see `drop_tables`)

    def drop_tables(self) -> None:
        """From now on keep no block tables, no join order and no history (see the module doc):
        only for a run in which no plan's `cohort_chunks()` is read. Before the first join."""
        if self._members or self._history.changes:
            raise RuntimeError("drop_tables() after members joined")
        self.tables = False

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, seq: int) -> bool:
        return seq in self._members

    def context_sum(self, step: int) -> int:
        return self._base + len(self._members) * step

    def join(self, r: Request, step: int, block_ids: Sequence[int]) -> None:
        """r decodes one token per step from `step` on, lazily, until its next event. `block_ids`
        is its block table (unchanged until it leaves)."""
        r.anchor_step = step
        r.event_version += 1
        c = r.num_computed_tokens
        if self.tables:
            member = (r.admit_seq, r.spec.request_id, c, step, block_ids)  # CohortMember's fields, unwrapped
            self._members[r.admit_seq] = member
            self._history.changes.append((r.admit_seq, member))
        else:
            self._members[r.admit_seq] = (c, step, len(block_ids))
        self._base += c - step
        alloc_step = step + (-c) % self.block_size  # computed % block_size == 0: needs a block
        finish_step = step + r.spec.output_len - r.num_output_tokens - 1  # max_output_tokens
        heapq.heappush(self._alloc_events, (alloc_step, r.admit_seq, r.event_version, r))
        entry = r.finish_entry
        if entry is None or entry[0] != finish_step or entry[1] != r.admit_seq:  # else it is queued
            # event_version breaks ties between entries of one request: each join bumps it
            r.finish_entry = entry = (finish_step, r.admit_seq, r.event_version, r)
            heapq.heappush(self._finish_events, entry)

    def leave(self, r: Request, step: int, last_token_time: float) -> None:
        """Make r's counters exact as of the start of `step` and take it out. `last_token_time`
        is the time its last lazily decoded token was sampled (if it decoded any)."""
        del self._members[r.admit_seq]
        if self.tables:
            changes = self._history.changes
            changes.append((r.admit_seq, None))
            if len(changes) > _MIN_HISTORY and len(changes) > len(self._members):
                # Start a new history from the current membership (snapshots of the old one keep
                # it). Checked only at a leave: a join adds a member and a change alike, so joins
                # never widen the gap between the changes and the members.
                self._history = CohortHistory(dict(self._members))
        self._base -= r.num_computed_tokens - r.anchor_step
        k = step - r.anchor_step
        if k > 0:
            r.num_computed_tokens += k
            r.num_output_tokens += k
            r.last_token_time = last_token_time
        r.anchor_step = -1
        r.event_version += 1

    def pass_boundary(self, r: Request, step: int, end: float) -> None:
        """r's token at `step`, ending at `end`, went into the new block its table ends with:
        what `leave(r, step, ·)`, sampling that token and `join(r, step + 1, table)` do, in one.
        The member moves to the end of the join order (as rejoining does); its context minus its
        anchor step stays the same, so `_base` does too; its finish step stays too, so its finish
        event stays valid (no version bump)."""
        seq = r.admit_seq
        k = step + 1 - r.anchor_step  # tokens decoded since the anchor, this step's included
        c = r.num_computed_tokens + k
        r.num_computed_tokens = c
        r.num_output_tokens += k
        r.last_token_time = end
        r.anchor_step = step + 1
        if self.tables:
            del self._members[seq]
            member = (seq, r.spec.request_id, c, step + 1, TableView(r.block_ids))
            self._members[seq] = member
            changes = self._history.changes
            changes.append((seq, None))
            changes.append((seq, member))
            if len(changes) > _MIN_HISTORY and len(changes) > len(self._members):
                self._history = CohortHistory(dict(self._members))
        else:
            self._members[seq] = (c, step + 1, len(r.block_ids))
        heapq.heappush(self._alloc_events, (step + self.block_size, seq, r.event_version, r))

    def snapshot(self) -> CohortSnapshot:
        if not self.tables:
            return UNTRACKED
        return CohortSnapshot(self._history, len(self._history.changes))

    # -- events ----------------------------------------------------------------------------------
    def pop_alloc_events(self, upto_step: int) -> list[Request]:
        """Members that need a new block at a step <= upto_step (they are still members)."""
        return _pop_events(self._alloc_events, upto_step)

    def pop_finish_events(self, upto_step: int) -> list[Request]:
        """Members whose last token is sampled at a step <= upto_step (they are still members)."""
        heap, out = self._finish_events, []
        while heap and heap[0][0] <= upto_step:
            entry = heapq.heappop(heap)
            r = entry[3]
            if entry is r.finish_entry:
                r.finish_entry = None  # surfaced: a later join queues a new one
                if r.anchor_step >= 0:
                    out.append(r)
        return out

    def next_event_step(self) -> int | None:
        """The earliest step with a member's event, None if there is none."""
        bounds = [e for e in (_next_event(self._alloc_events), self.next_finish_step()) if e is not None]
        return min(bounds) if bounds else None

    def next_finish_step(self) -> int | None:
        """The earliest step in which a member samples its last token, None if none does."""
        heap = self._finish_events
        while heap:
            entry = heap[0]
            r = entry[3]
            if entry is r.finish_entry:
                if r.anchor_step >= 0:
                    return entry[0]
                r.finish_entry = None  # its request left the cohort: the entry goes
            heapq.heappop(heap)
        return None

    def take_alloc_group(self, end: int) -> tuple[int, list[Request]] | None:
        """The earliest step before `end` in which members need a new block, and those members
        in admission order, their events taken off the heap; None if no member needs one before
        `end` (the heap then keeps its live entries)."""
        heap = self._alloc_events
        step = _next_event(heap)  # stale entries before it leave the heap
        if step is None or step >= end:
            return None
        members = []
        while heap and heap[0][0] == step:  # step is the least live one: no earlier entry is left
            _, _, version, r = heapq.heappop(heap)
            if version == r.event_version and r.anchor_step >= 0:
                members.append(r)
        return step, members

    def take_alloc_events_before(self, end: int) -> list[tuple[int, int, int, Request]]:
        """The live allocation events at steps < end, in (step, admission) order, taken off the
        heap with every stale one there (`requeue` puts live ones back)."""
        heap, out = self._alloc_events, []
        while heap and heap[0][0] < end:
            entry = heapq.heappop(heap)
            r = entry[3]
            if entry[2] == r.event_version and r.anchor_step >= 0:
                out.append(entry)
        return out

    def requeue(self, entries: list[tuple[int, int, int, Request]]) -> None:
        """Put events that `take_alloc_events_before` took back on the heap, as they were."""
        for entry in entries:
            heapq.heappush(self._alloc_events, entry)

    def alloc_steps_before(self, end: int) -> list[int]:
        """The steps < end of the members' allocation events, unordered; the heap is left as it
        is. A member has at most one live event: every push follows the pop of its last one
        (`pass_boundary`) or a version bump (`join`)."""
        return [t for t, _, version, r in self._alloc_events
                if t < end and version == r.event_version and r.anchor_step >= 0]

    def verify(self, running: list[Request], step: int) -> None:
        """Check the members against the running requests (call between steps)."""
        members = {r.admit_seq for r in running if r.anchor_step >= 0}
        assert members == set(self._members), "cohort members != running requests with an anchor"
        base = 0
        for r in running:
            if r.anchor_step >= 0:
                if self.tables:
                    m = CohortMember(*self._members[r.admit_seq])
                    anchor, table_len = (m.anchor_context, m.anchor_step), len(m.block_ids)
                    assert m.block_ids == tuple(r.block_ids), f"{r.request_id}: block table changed in the cohort"
                else:  # a table only grows, and only by a leave's or a boundary's allocation
                    c, step_, table_len = self._members[r.admit_seq]
                    anchor = (c, step_)
                assert anchor == (r.num_computed_tokens, r.anchor_step), f"{r.request_id}: cohort anchor drifted"
                assert table_len == len(r.block_ids), f"{r.request_id}: block table changed in the cohort"
                base += r.num_computed_tokens - r.anchor_step
        assert base == self._base, "cohort context bookkeeping drifted"
        queued = set(map(id, self._finish_events))
        for r in running:
            if r.anchor_step >= 0:
                finish = r.anchor_step + r.spec.output_len - r.num_output_tokens - 1
                e = r.finish_entry
                assert e is not None and e[:2] == (finish, r.admit_seq), f"{r.request_id}: finish entry is stale"
                assert id(e) in queued, f"{r.request_id}: finish entry is not queued"
        if self.tables:
            assert self.snapshot().members() == tuple(CohortMember(*m) for m in self._members.values()), \
                "cohort history drifted"


def _pop_events(heap: list, upto_step: int) -> list[Request]:
    out = []
    while heap and heap[0][0] <= upto_step:
        _, _, version, r = heapq.heappop(heap)
        if version == r.event_version and r.anchor_step >= 0:
            out.append(r)
    return out


def _next_event(heap: list) -> int | None:
    while heap:
        s, _, version, r = heap[0]
        if version == r.event_version and r.anchor_step >= 0:
            return s
        heapq.heappop(heap)
    return None
