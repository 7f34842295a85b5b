"""`pass_alone(env, delay)` lets a process's time pass without an event where nothing else could
run first: every process then runs at the same times and in the same order, ties included, as
with a plain timeout (the serving loop relies on it to keep every result)."""

import random

import pytest
import simpy

from apcsim.sim.events import pass_alone


def _plain(env, delay):
    return env.timeout(delay)


def _trace(seed: int, wait) -> tuple[list, int]:
    """A loop that waits with `wait` beside arrivals at times on the same grid (so that many fall
    exactly where a loop step ends) and a bystander woken by the loop; returns who ran when, in
    order, and how many of the loop's waits were timeouts."""
    rng = random.Random(seed)
    env = simpy.Environment()
    log = []
    box = {"poke": env.event(), "yields": 0}

    def loop():
        for i in range(200):
            ev = wait(env, rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))
            if ev is not None:
                box["yields"] += 1
                yield ev
            log.append(("loop", i, env.now))
            if i % 7 == 0 and not box["poke"].triggered:
                box["poke"].succeed()  # scheduled now: the bystander runs at this instant

    def arrivals():
        for j in range(60):
            yield env.timeout(rng.choice([0.5, 1.0, 2.0, 3.0]))
            log.append(("arrival", j, env.now))

    def bystander():
        while True:
            yield box["poke"]
            box["poke"] = env.event()
            log.append(("bystander", env.now))

    env.process(loop())
    env.process(arrivals())
    env.process(bystander())
    env.run(until=150)
    return log, box["yields"]


@pytest.mark.parametrize("seed", range(20))
def test_processes_run_at_the_same_times_in_the_same_order(seed):
    alone, yields_alone = _trace(seed, pass_alone)
    plain, yields_plain = _trace(seed, _plain)
    assert alone == plain
    assert yields_alone < yields_plain, "no wait was left out"


def test_the_clock_moves_at_once_only_before_every_other_event():
    env = simpy.Environment()
    env.timeout(5.0)
    assert pass_alone(env, 3.0) is None and env.now == 3.0
    tie = pass_alone(env, 2.0)  # ends when the other event is due: that one goes first
    assert isinstance(tie, simpy.Timeout)
    env.run()
    assert env.now == 5.0 and tie.processed
    assert pass_alone(env, 1.5) is None and env.now == 6.5  # nothing left to wait for
    with pytest.raises(ValueError):
        pass_alone(env, -1.0)
