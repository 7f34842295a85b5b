"""Median time of a callable: CUDA events around back-to-back calls on the GPU, `perf_counter` on
the CPU.

On the GPU a call is timed as the engine runs it, inside a stream of launches: `iters` calls are
enqueued between two events, so a kernel shorter than its launch overhead is measured at the
launch rate (as it runs in a real forward pass), not at its bare kernel time. `iters` is picked
per op so that one timed repeat lasts about `target_ms` (at most `max_iters` calls).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class OpTimer:
    device: torch.device
    warmup: int = 3
    repeats: int = 10
    target_ms: float = 1.0
    max_iters: int = 20
    on_point: Optional[Callable[[float], None]] = None  # called with each median, as it is measured

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {self.warmup}, {self.repeats}")
        self.calls = 0  # every call made, warm-up included (for the run's metadata)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn: Callable[[], object]) -> float:
        """Median over `repeats` of the mean time of one call, in milliseconds."""
        ms = self._median_ms(fn)
        if self.on_point is not None:
            self.on_point(ms)
        return ms

    @torch.inference_mode()
    def _median_ms(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        self._sync()
        self.calls += self.warmup
        if self.device.type != "cuda":
            times = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            self.calls += self.repeats
            return statistics.median(times)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed(iters: int) -> float:
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            self.calls += iters
            return start.elapsed_time(end) / iters

        first = timed(1)
        iters = max(1, min(self.max_iters, math.ceil(self.target_ms / max(first, 1e-3))))
        return statistics.median(timed(iters) for _ in range(self.repeats))
