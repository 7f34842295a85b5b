"""Ctrl-C and kill during a run: stop cleanly, keep what is done, say so.

Inside `interruptible()`, SIGINT and SIGTERM raise `RunInterrupted` in the main thread (SIGTERM's
default would end the process without running any cleanup; SIGINT's KeyboardInterrupt is caught
by too many libraries). The simulator catches it between events, so the run's state is
consistent: it writes the metrics of the requests that finished, the requests.csv rows written so
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


def _raise(signum, _frame) -> None:
    raise RunInterrupted(signum)


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
