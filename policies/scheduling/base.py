"""The scheduling-policy contract: the waiting queue's order and the preemption victim.

The scheduler admits from the head of the waiting queue (`peek`/`pop`), puts preempted requests
back with `readd_preempted`, and when blocks run out asks `victim(running)` which running request
to preempt. `running` is in admission order.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Sequence

from policies.types import SchedulableRequest


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
    max_model_len: Optional[int] = None  # prompt + output tokens at most; None: what the cache holds


class SchedulingPolicy(abc.ABC):
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg

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
