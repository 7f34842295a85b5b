"""Ctrl-C and kill during a run: stop cleanly, keep what is done, say so.

Inside `interruptible()`, SIGINT and SIGTERM raise `RunInterrupted` in the main thread (SIGTERM's
default would end the process without running any cleanup; SIGINT's KeyboardInterrupt is caught
by too many libraries). A running simulation is inside `deferred()`: there a signal is only
remembered, and `RunInterrupted` is raised at the loop's next `safe_point()` (the start of a
step), never halfway through updating the scheduler, the metrics and requests.csv, so the run's
state is consistent: the simulator writes the metrics of the requests that finished, the requests.csv rows written so
far, and `status.json` = {"status": "interrupted", ...}; the process then exits 128 + signal.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """A signal asked the run to stop. A BaseException, like KeyboardInterrupt, so that
    `except Exception` in library code does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _Deferral:
    """Whether signals are being held back (`depth` > 0) and the first one held (`pending`)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None


# Process-wide, like the signal handlers it serves.
_DEFERRAL = _Deferral()


def _raise(signum, _frame) -> None:
    if _DEFERRAL.depth:
        if _DEFERRAL.pending is None:
            _DEFERRAL.pending = signum
        return
    raise RunInterrupted(signum)


def safe_point() -> None:
    """Raise `RunInterrupted` now if a signal arrived while deferred (a no-op otherwise)."""
    signum = _DEFERRAL.pending
    if signum is not None:
        _DEFERRAL.pending = None
        raise RunInterrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Signals inside the block wait for a `safe_point()`, or for the block's normal end."""
    _DEFERRAL.depth += 1
    try:
        yield
    finally:
        _DEFERRAL.depth -= 1
    if _DEFERRAL.depth == 0:
        safe_point()


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise RunInterrupted inside the block; the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    old = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
