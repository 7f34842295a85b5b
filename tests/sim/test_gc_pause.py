"""The simulation's collector setting (apcsim.sim.gc_pause) is scoped to the run: it leaves the
collector as it found it, even when the run fails, and cycles made inside are still collected."""

import gc
import weakref

import pytest

from apcsim.sim.gc_pause import YOUNG_THRESHOLD, fewer_collections


class _Node:
    pass


def test_it_freezes_and_raises_the_threshold_only_inside():
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with fewer_collections():
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_it_restores_the_collector_when_the_run_raises():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with fewer_collections():
            raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_it_leaves_someone_elses_freeze_alone():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with fewer_collections():
            pass
        assert gc.get_freeze_count() == frozen  # not unfrozen by the run
    finally:
        gc.unfreeze()


def test_cycles_made_during_the_run_are_still_collected():
    with fewer_collections():
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
