"""Python's cyclic garbage collector, set for a simulation's event loop.

A run makes and drops millions of small objects (plans, chunks, events, block-id lists), almost
none of them in reference cycles: they die by reference counting. The collector still scans the
young ones every 700 net container allocations, and every object that outlives a few scans is
scanned again in the older generations, along with everything built before the loop started
(the pool's blocks, the workload's tables), which never becomes garbage. On the 100k-request
shared-prefix benchmark that was about 6 % of the run's CPU time, for some 6,000 objects collected
in all.

`fewer_collections` freezes what exists when the loop starts (`gc.freeze`: moved out of every
generation, never scanned) and raises the youngest generation's threshold for the loop's span;
both are undone when it ends. Cycles made during the run are still collected, only in larger
batches, so memory stays bounded (peak RSS did not move on the benchmarks). Nothing the
simulation decides depends on when the collector runs.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

# Net container allocations between young-generation collections during a run (CPython's default
# is 700): large enough that most objects die before their first scan.
YOUNG_THRESHOLD = 20_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Freeze the objects that exist now and collect the young generation less often, until
    the block ends. Leaves the collector as it found it; if something else has frozen objects
    already (`gc.get_freeze_count()`), it freezes and unfreezes nothing, so as not to undo that."""
    old = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.set_threshold(max(old[0], YOUNG_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        if freeze:
            gc.unfreeze()
