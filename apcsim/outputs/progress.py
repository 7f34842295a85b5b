"""A progress bar over simulated requests (tqdm), fed in batches so that it costs nothing
measurable: the simulator reports finished requests per step, the bar redraws at most every
`1/200` of the run."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TextIO


class Progress(Enum):
    """`progress=auto`: a bar over simulated requests in a single run on a terminal, none in a
    multirun (parallel jobs would interleave their bars); `on`/`off` force it either way."""

    auto = "auto"
    on = "on"
    off = "off"


def wants_bar(mode: Progress, *, multirun: bool, stream: TextIO) -> bool:
    """`auto`: only a single run on a terminal; multirun jobs (maybe parallel) stay quiet."""
    if mode is Progress.on:
        return True
    if mode is Progress.off:
        return False
    return not multirun and bool(getattr(stream, "isatty", lambda: False)())


class RequestProgress:
    """Counts finished requests; hands them to tqdm once `batch` have gathered."""

    def __init__(self, total: int, *, stream: TextIO | None = None, desc: str = "simulated requests") -> None:
        from tqdm import tqdm

        # The real stderr: the CLI swaps sys.stderr for a buffer to fold Hydra's errors to one
        # line, and a bar written there would show only after the run.
        self._bar = tqdm(total=total, desc=desc, unit="req", file=stream or sys.__stderr__,
                         dynamic_ncols=True, mininterval=0.2)
        self._batch = max(1, total // 200)
        self._pending = 0
        self.total = total

    def advance(self, n: int) -> None:
        self._pending += n
        if self._pending >= self._batch:
            self._bar.update(self._pending)
            self._pending = 0

    def close(self) -> None:
        """The run is over: every request either finished or was rejected."""
        self._bar.update(self.total - self._bar.n)
        self._bar.close()


def make_progress(mode: Progress, total: int, *, multirun: bool) -> RequestProgress | None:
    stream = sys.__stderr__
    if stream is None or total == 0 or not wants_bar(mode, multirun=multirun, stream=stream):
        return None
    return RequestProgress(total, stream=stream)
