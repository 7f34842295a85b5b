"""`first_of(env, a, b)` schedules like SimPy's `a | b`: a waiter resumes at the same time and in
the same place among equal times (the arrivals processes rely on it to keep every result)."""

import random

import pytest
import simpy

from apcsim.sim.events import first_of, wait_as_first_of


def _trace(seed: int, either) -> list:
    """A waiter on (timeout | signal) beside pokers that fire the signal and a bystander that
    acts at the same instants; returns who ran when, in order, and the ids SimPy handed out."""
    rng = random.Random(seed)
    env = simpy.Environment()
    log = []
    box = {"signal": env.event()}

    def waiter():
        for i in range(40):
            wake = env.timeout(rng.choice([0.5, 1.0, 1.5, 2.0]))
            signal = box["signal"]
            yield either(env, wake, signal)
            log.append(("waiter", i, env.now, wake.processed, signal.triggered))
            if signal.triggered:
                box["signal"] = env.event()

    def poker(name, delays):
        for d in delays:
            yield env.timeout(d)
            log.append((name, env.now))
            if not box["signal"].triggered:
                box["signal"].succeed()
            yield env.timeout(0)
            log.append((name, "after", env.now))

    env.process(waiter())
    for name in ("p", "q"):
        env.process(poker(name, [rng.choice([0.5, 1.0, 0.25]) for _ in range(30)]))
    env.run()
    log.append(("eids", next(env._eid)))
    return log


@pytest.mark.parametrize("seed", range(20))
def test_first_of_resumes_where_any_of_does(seed):
    assert _trace(seed, first_of) == _trace(seed, lambda env, a, b: a | b)


def test_an_event_processed_already_is_the_first():
    env = simpy.Environment()
    done = env.event().succeed()
    env.run()  # `done` is processed
    late = env.timeout(5)
    either = first_of(env, late, done)
    assert either.triggered
    env.run(until=either)
    assert env.now == 0
    assert not late.callbacks  # nothing left listening on the other one


def test_it_stops_listening_to_the_other_event():
    env = simpy.Environment()
    signal = env.event()
    for _ in range(50):
        env.run(until=first_of(env, env.timeout(1), signal))
    assert signal.callbacks == []  # 50 waits left no callback behind on the long-lived event


def _ties(seed: int, wait) -> list:
    """A waiter on timeouts that often end when a bystander's do, and a poker that schedules
    events at the same instants from inside its own; who ran when, in order."""
    rng = random.Random(seed)
    env = simpy.Environment()
    log = []

    def waiter():
        for i in range(60):
            yield from wait(env, env.timeout(rng.choice([0.0, 0.5, 1.0])))
            log.append(("waiter", i, env.now))

    def bystander(name):
        for j in range(60):
            yield env.timeout(rng.choice([0.5, 1.0]))
            log.append((name, j, env.now))
            if j % 3 == 0:
                yield env.timeout(0)  # queued behind the waiter's event when both are due now
                log.append((name, "again", env.now))

    env.process(bystander("early"))  # queued before the waiter: its events come first at a tie
    env.process(waiter())
    env.process(bystander("late"))
    env.run()
    return log


def _with_first_of(env, wake):
    yield first_of(env, wake, env.event())  # the other event never fires


@pytest.mark.parametrize("seed", range(20))
def test_wait_as_first_of_resumes_where_first_of_does(seed):
    assert _ties(seed, wait_as_first_of) == _ties(seed, _with_first_of)
