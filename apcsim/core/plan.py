"""The step plan: the only thing an executor sees of the scheduler's decisions.

Requests scheduled in a step are of two kinds. `chunks` are handled one by one: prefill chunks,
and decodes that allocated a block, resumed or finished a skip this step. The `cohort` is every
other running request in its decode phase: one new token each, no block allocation; the
scheduler advances it lazily, so a plan states its size and total context instead of listing it
(`cohort_chunks()` lists it for an executor that needs every block table, such as the engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ScheduledChunk:
    request_id: str
    num_new_tokens: int
    num_context_tokens: int  # tokens of this request already in the KV cache (hit or computed)
    block_ids: tuple[int, ...]  # the block table after this step's allocation
    samples: bool  # True if this step ends the request's prompt (or recompute) and samples a token


@dataclass
class StepPlan:
    step: int
    chunks: list[ScheduledChunk]
    num_cohort: int = 0  # cohort decodes, one token each
    cohort_context_sum: int = 0  # sum of the cohort's context lengths (tokens with KV)
    num_hashed_tokens: int = 0  # tokens of requests admitted this step, hashed and looked up (0 without caching)
    preempted: list[str] = field(default_factory=list)
    cohort_chunks: Callable[[], list[ScheduledChunk]] = field(default=lambda: [], repr=False)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks) + self.num_cohort

    @property
    def num_requests(self) -> int:
        return len(self.chunks) + self.num_cohort

    @property
    def is_empty(self) -> bool:
        return not self.chunks and self.num_cohort == 0
