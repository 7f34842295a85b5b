"""The step plan: the only thing an executor sees of the scheduler's decisions, as immutable values.

Requests scheduled in a step are of two kinds. `chunks` are handled one by one: prefill chunks,
and decodes that allocated a block, resumed or finished a skip this step. The *cohort* is every
other running request in its decode phase: one new token each, no block allocation (see
`apcsim.core.cohort`). A plan states the cohort's size and total context, which is all a cost
model needs, and carries a `CohortSnapshot` from which an executor that needs every block table
(the engine, the parity recorder) lists the cohort's chunks with `cohort_chunks()`.

A plan stays valid after `update()` and after later steps. Keeping it so costs O(1) per cohort
membership change, not O(cohort) per step (see `CohortSnapshot`), and O(1) per block table: a
table is a view of the first n ids of the request's block list, whose first n entries never
change (see `apcsim.core.block_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class ScheduledChunk(NamedTuple):
    """One request's work in a step. A NamedTuple, not a frozen dataclass: a plan makes one per
    chunk every step, and a frozen dataclass's __init__ costs ~2.5x as much (one
    object.__setattr__ a field)."""

    request_id: str
    num_new_tokens: int
    num_context_tokens: int  # tokens of this request already in the KV cache (hit or computed)
    # the block table after this step's allocation: a tuple, or the scheduler's copy-free view
    # of the request's table (apcsim.core.block_table.TableView), which behaves as one
    block_ids: Sequence[int]
    samples: bool  # True if this step ends the request's prompt (or recompute) and samples a token


class CohortMember(NamedTuple):
    """A cohort member as of the step it joined (its anchor step). Its context at any later step
    s of its membership is `anchor_context + s - anchor_step`; its block table cannot change
    while it is a member (it leaves before the step that needs a new block)."""

    admit_seq: int
    request_id: str
    anchor_context: int  # tokens with KV at anchor_step
    anchor_step: int
    block_ids: Sequence[int]  # a tuple or a TableView, as ScheduledChunk's

    def chunk(self, step: int) -> ScheduledChunk:
        return ScheduledChunk(self.request_id, 1, self.anchor_context + step - self.anchor_step, self.block_ids, True)


class CohortHistory:
    """The cohort's membership as a persistent (never rewritten) record: a base membership and
    the changes made since, appended one per join or leave. A snapshot names a point in it, so
    handing one to every plan is O(1), and only a snapshot that is read pays for listing the
    members. Written only by `DecodeCohort`; `changes` is append-only, which is what keeps every
    snapshot of it valid. A new history starts (see `DecodeCohort`) once the changes outnumber
    the members, so that reading a snapshot costs O(members), amortized."""

    __slots__ = ("base", "changes")

    def __init__(self, base: dict[int, tuple]) -> None:
        # Members are stored as plain tuples of CohortMember's fields (cheaper to make at every
        # join); `CohortSnapshot.members` wraps them.
        self.base = base  # admit_seq -> member, in join order; never mutated
        self.changes: list[tuple[int, tuple | None]] = []  # (admit_seq, member or None: left)


@dataclass(frozen=True)
class CohortSnapshot:
    """The cohort as of one plan: `history`'s base plus its first `num_changes` changes."""

    history: CohortHistory
    num_changes: int

    def members(self) -> tuple[CohortMember, ...]:
        """The members in join order (a member that left and joined again is at the end), the
        order the scheduler's cohort kept them in."""
        live = dict(self.history.base)
        for seq, member in self.history.changes[: self.num_changes]:
            if member is None:
                del live[seq]
            else:
                live[seq] = member
        return tuple(CohortMember(*m) for m in live.values())


class _Untracked:
    """A plan's cohort when the scheduler keeps no member tables (`DecodeCohort.drop_tables`:
    the simulator without an `on_step` hook, whose cost model reads only the cohort's size and
    context). Listing its members is an error, not an empty cohort."""

    __slots__ = ()

    def members(self) -> tuple[CohortMember, ...]:
        raise RuntimeError("this run's plans carry no cohort block tables (the simulator keeps none unless an "
                           "on_step hook is given); read plan.num_cohort and plan.cohort_context_sum instead")

    def __repr__(self) -> str:
        return "UNTRACKED"


UNTRACKED = _Untracked()


@dataclass(frozen=True)
class StepPlan:
    step: int
    chunks: tuple[ScheduledChunk, ...]
    num_cohort: int = 0  # cohort decodes, one token each
    cohort_context_sum: int = 0  # sum of the cohort's context lengths (tokens with KV)
    num_hashed_tokens: int = 0  # tokens of requests admitted this step, hashed and looked up (0 without caching)
    preempted: tuple[str, ...] = ()
    # None: no cohort, or a plan made by hand (cost-model tests); UNTRACKED: a cohort whose tables
    # were not kept (the simulator's plans without an on_step hook)
    cohort: CohortSnapshot | _Untracked | None = None
    # Host-tier copies to run before the forward pass (apcsim.core.host_tier.StepTransfers);
    # None without a host tier or when the step moves nothing.
    transfers: object | None = None

    def __post_init__(self) -> None:
        # Plans made by hand may pass lists; store tuples so that a plan cannot be changed.
        if type(self.chunks) is not tuple:
            object.__setattr__(self, "chunks", tuple(self.chunks))
        if type(self.preempted) is not tuple:
            object.__setattr__(self, "preempted", tuple(self.preempted))

    def cohort_chunks(self) -> tuple[ScheduledChunk, ...]:
        """The cohort of this step, one chunk each (for executors that need every block table).
        O(cohort size): the simulator never calls it."""
        if self.cohort is None:
            return ()
        return tuple(m.chunk(self.step) for m in self.cohort.members())

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks) + self.num_cohort

    @property
    def num_requests(self) -> int:
        return len(self.chunks) + self.num_cohort

    @property
    def is_empty(self) -> bool:
        return not self.chunks and self.num_cohort == 0 and self.transfers is None
