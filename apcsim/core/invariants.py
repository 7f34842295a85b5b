"""The serving core's invariants, checked between steps (`Scheduler.verify`: tests, `verify=true`
runs): the running list's order, the cohort and explicit sets, each holder's block count, and
every block's ref count against the requests that hold it; then the pool's, the pending keys',
the cohort's and the host tier's own checks. Apart from apcsim.core.scheduler, whose module is
about the steps every run takes; this only reads the scheduler's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apcsim.core.request import Status
from apcsim.mathutil import cdiv

if TYPE_CHECKING:
    from apcsim.core.scheduler import Scheduler


def check_scheduler(s: Scheduler) -> None:
    pool = s.kv.pool
    pool.verify()
    s.pending_keys.verify()
    assert s._running_seqs == [r.admit_seq for r in s.running], "running order broken"
    in_cohort = {r for r in s.running if r.anchor_step >= 0}
    assert in_cohort | s._explicit == set(s.running), "running != cohort + explicit"
    assert not (in_cohort & s._explicit), "a request is both cohort and explicit"
    s.cohort.verify(s.running, s.step)
    refs: dict[int, int] = {}
    for r in s.running:
        assert r.status is Status.RUNNING
        c = s._computed(r)
        assert len(r.block_ids) == cdiv(c, s.block_size), f"{r.request_id}: {len(r.block_ids)} blocks for {c} tokens"
        for b in r.block_ids:
            refs[b] = refs.get(b, 0) + 1
    for r in s.loading:
        assert len(r.block_ids) * s.block_size == r.num_computed_tokens, f"loading {r.request_id}: blocks != tokens"
        for b in r.block_ids:
            refs[b] = refs.get(b, 0) + 1
    for b in s.pending_keys.parked_blocks():  # a parked range holds its queued blocks
        refs[b] = refs.get(b, 0) + 1
    if s.host_tier is not None:
        s.host_tier.verify()
    for b in pool.blocks:
        assert b.ref_cnt == refs.get(b.block_id, 0), f"block {b.block_id}: ref {b.ref_cnt} != holders {refs.get(b.block_id, 0)}"
    for r in s.policy:
        assert not r.block_ids and r.num_computed_tokens == 0, f"waiting {r.request_id} holds blocks"
