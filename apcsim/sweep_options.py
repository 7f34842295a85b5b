"""Typed config nodes for sweeps: skip-or-rerun, the progress bar, and the tuning objective.

They live in `SimConfig` (keys `sweep`, `progress`, `tune`) so that a typo is a composition
error, and they are left out of a job's config fingerprint (`apcsim.job.config_fingerprint`):
none of them changes a simulation's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Progress(Enum):
    """`progress=auto`: a bar over simulated requests in a single run on a terminal, none in a
    multirun (parallel jobs would interleave their bars); `on`/`off` force it either way."""

    auto = "auto"
    on = "on"
    off = "off"


@dataclass
class SweepConfig:
    # A multirun job whose directory already holds metrics.json from the same config is not
    # simulated again (re-running a sweep only fills in what is missing or failed); true forces it.
    rerun: bool = False
    # A multirun in which any job failed exits with status 1 once every job ran and sweep.csv /
    # sweep.html are written (so scripts and CI notice); false: exit 0 and leave it to `status`.
    fail_on_error: bool = True


@dataclass
class TuneConfig:
    """The value a job returns to an optimising sweeper (hydra-optuna-sweeper), to minimise.

    Feasible (TTFT p99 <= target and no request rejected): the KV cache's capacity in tokens,
    num_gpu_blocks * block_size, i.e. its memory. Infeasible: max_capacity_tokens * (1 + ttft_p99 /
    target), worse than any feasible point and still graded, so the sampler moves toward the
    target. A failed job returns +inf."""

    ttft_p99_target_s: float = 1.0
    max_capacity_tokens: int = 1 << 20  # an upper bound of num_gpu_blocks * block_size over the search space
