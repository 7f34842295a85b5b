"""Which running request to preempt when blocks run out: `scheduler.preemption`.

- `policy`          ask the scheduling policy (`SchedulingPolicy.victim`): FCFS and the
                    cache-aware orders take the last admitted (vLLM V1's default), `priority` the
                    lowest priority. The default, so existing configs behave as before.
- `latest_arrival`  the request that arrived last (ties: admitted last).
- `lowest_priority` the highest `priority` value, then the latest arrival (vLLM's priority policy).
- `least_computed`  the request with the fewest computed tokens, i.e. the least work lost to
                    recompute (vllm-project/vllm#54644), ties to the one admitted last.

A chooser takes the running requests (admission order) and `computed(r)`, the request's exact
computed-token count (the scheduler's decodes are lazy, so `r.num_computed_tokens` may lag).
"""

from __future__ import annotations

from typing import Callable, Sequence

Chooser = Callable[[Sequence, Callable], object]


def _latest_arrival(running, computed):
    return max(running, key=lambda r: (r.arrival_time, r.admit_seq))


def _lowest_priority(running, computed):
    return max(running, key=lambda r: (r.priority, r.arrival_time))  # vLLM's: first of equals


def _least_computed(running, computed):
    return min(running, key=lambda r: (computed(r), -r.admit_seq))


PREEMPTION_CHOOSERS: dict[str, Chooser] = {
    "latest_arrival": _latest_arrival,
    "lowest_priority": _lowest_priority,
    "least_computed": _least_computed,
}
PREEMPTION_MODES = ("policy", *PREEMPTION_CHOOSERS)
