"""The scheduling-policy contract: the waiting queue's order and the preemption victim.

The scheduler admits from the head of the waiting queue (`peek`/`pop`), puts preempted requests
back with `readd_preempted`, and when blocks run out asks `victim(running)` which running request
to preempt (unless `scheduler.preemption` names a fixed rule). `running` is in admission order.
A policy whose order depends on the cache reads it through `cached_blocks`, given by `bind`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from policies.types import Clock, SchedulableRequest


def _no_probe(request) -> int:
    raise RuntimeError("cached_blocks() before the scheduler bound the policy")


@dataclass
class SchedulerConfig:
    """The `scheduler` config node. vLLM V1's defaults where it has one."""

    name: str = "?"
    max_num_batched_tokens: int = 8192  # token budget per step
    max_num_seqs: int = 256  # running requests at most
    chunked_prefill: bool = True
    # true: cached prompt tokens cost no budget (vLLM >= 0.6.5); false: they are charged, as in
    # vLLM 0.6.3, which the seed article blames for extra preemptions at high concurrency.
    cache_aware_budget: bool = True
    # true: a waiting request is admitted when the blocks it lacks beyond its cache hits are free;
    # false: all its prompt blocks must be free, hits or not, as vLLM 0.6.3's can_allocate checked
    # (vllm-project/vllm#7883), which lowers how full the cache can be run.
    cache_aware_admission: bool = True
    # Tokens of one request's prefill chunk at most per step (0: no limit); vLLM's
    # long_prefill_token_threshold, which stops one long prompt from starving decodes.
    long_prefill_token_threshold: int = 0
    # vLLM 0.32: no cap when a single request is running or waiting (nobody to starve); earlier
    # releases capped it regardless.
    long_prefill_solo_uncapped: bool = True
    # vLLM 0.32's scheduler_reserve_full_isl: a waiting request is admitted only if the blocks for
    # its whole current sequence (beyond its hits) are free, not just those of its first chunk.
    reserve_full_sequence: bool = True
    max_model_len: Optional[int] = None  # prompt + output tokens at most; None: what the cache holds
    # Which running request to preempt when blocks run out: policy (the scheduling policy's own
    # choice), latest_arrival, lowest_priority or least_computed (policies/scheduling/preemption.py).
    preemption: str = "policy"


class SchedulingPolicy(abc.ABC):
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.cached_blocks: Callable[[SchedulableRequest], int] = _no_probe
        self.clock = Clock()
        self.block_size = 1

    def bind(self, cached_blocks: Callable[[SchedulableRequest], int], clock: Clock, block_size: int) -> None:
        """Called once by the scheduler. `cached_blocks(r)` is how many leading prompt blocks of
        waiting request r the cache holds now (read-only; memoised by the KV cache manager),
        `clock.now` the current time, `block_size` tokens per block. Cache-aware orders (lpm,
        spf, ...) use them."""
        self.cached_blocks = cached_blocks
        self.clock = clock
        self.block_size = block_size

    def refresh(self) -> None:
        """The cache or the clock may have changed since the last call (the scheduler calls this
        before it reads the queue's head in a step); an order that depends on them re-ranks."""

    @abc.abstractmethod
    def add(self, request: SchedulableRequest) -> None:
        """A new arrival joins the waiting queue."""

    @abc.abstractmethod
    def readd_preempted(self, request: SchedulableRequest) -> None:
        """A preempted request goes back to the waiting queue."""

    @abc.abstractmethod
    def peek(self) -> SchedulableRequest: ...

    @abc.abstractmethod
    def pop(self) -> SchedulableRequest: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __iter__(self): ...

    @abc.abstractmethod
    def victim(self, running: Sequence[SchedulableRequest]) -> SchedulableRequest:
        """The running request to preempt when blocks run out."""
