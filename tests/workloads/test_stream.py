"""Workloads made one request at a time (`SpecSource`/`Workload`): the same specs, in the same
order, as the materialised list, and only the requests due exist."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apcsim.core.request import RequestSpec
from apcsim.workloads import SpecSource, Workload, open_workload
from apcsim.workloads import shared_prefix as shared_prefix_module
from apcsim.workloads._common import distinct_tokens
from apcsim.workloads.base import BuildContext, apply_arrivals, assign_tenants
from apcsim.workloads.priorities import PriorityClass, assign_priority_classes
from apcsim.workloads.shared_prefix import SharedPrefixConfig

VOCAB = 1000


def _matrix(seed_seq, n, length, shared, vocab, chunk_rows):
    """The shared_prefix prompts as the workload defines them: one matrix, drawn in row chunks."""
    build_ss = seed_seq.spawn(4)[0]
    rng = np.random.default_rng(build_ss)
    m = np.empty((n, length), dtype=np.int32)
    m[:, :shared] = rng.integers(0, vocab, shared, dtype=np.int32)
    if shared < length:
        for lo in range(0, n, chunk_rows):
            hi = min(n, lo + chunk_rows)
            m[lo:hi, shared:] = rng.integers(0, vocab, (hi - lo, length - shared), dtype=np.int32)
        m[:, shared] = distinct_tokens(rng, n, vocab)
    return m


@pytest.mark.parametrize("n,length,frac", [(2500, 8, 0.5), (7, 8, 0.0), (5, 4, 1.0), (1, 6, 0.5)])
def test_shared_prefix_rows_are_the_matrix_rows(monkeypatch, n, length, frac):
    """Several chunks (a small chunk size), more requests than the vocabulary (the distinct
    tokens wrap), no unique part, one request: each lazily made row is the matrix's row."""
    monkeypatch.setattr(shared_prefix_module, "_CHUNK_TOKENS", 40)
    shared = int(round(frac * length))
    chunk_rows = max(1, 40 // (length - shared)) if shared < length else n
    ss = np.random.SeedSequence(3)
    want = _matrix(ss, n, length, shared, VOCAB, chunk_rows)
    cfg = SharedPrefixConfig(num_requests=n, input_tokens=length, shared_fraction=frac, output_tokens=2)
    w = open_workload(cfg, vocab_size=VOCAB, seed_seq=np.random.SeedSequence(3))
    assert w.is_lazy and len(w) == n and w.min_tokens == length + 2
    got = [s for _, s in w.entries()]
    assert [s.request_id for s in got] == [f"shp-{i}" for i in range(n)]
    assert all(not s.prompt_token_ids.flags.writeable for s in got)
    np.testing.assert_array_equal(np.stack([s.prompt_token_ids for s in got]), want)
    # Asked for out of order (a chunk re-drawn from its saved state), a row is the same.
    build_ss = np.random.SeedSequence(3).spawn(4)[0]  # spawn() advances a SeedSequence: a fresh one
    src = shared_prefix_module.build(cfg, BuildContext(VOCAB, np.random.default_rng(build_ss), 0))
    for i in (n - 1, 0, n // 2):
        np.testing.assert_array_equal(src.make(i).prompt_token_ids, want[i])


def _source(n: int, times=None) -> SpecSource:
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, VOCAB, (n, 3), dtype=np.int32)

    def make(i, **fields):
        own = {"arrival_time": 0.0 if times is None else float(times[i])}
        own.update(fields)  # the run-wide rules' values replace the workload's own
        return RequestSpec(request_id=f"r{i}", prompt_token_ids=prompts[i], output_len=1 + i % 3, **own)
    return SpecSource(count=n, make=make, min_tokens=4, arrival_times=times)


def _as_list_rules(src: SpecSource, cfg, seed_seq) -> list[RequestSpec]:
    """The list path's rules applied to the source's specs (what build_workload did for lists)."""
    _, arrival_ss, tenant_ss, class_ss = seed_seq.spawn(4)
    specs = [src.make(i) for i in range(src.count)]
    if cfg.num_tenants is not None:
        specs = assign_tenants(specs, cfg, np.random.default_rng(tenant_ss))
    if cfg.priority_classes:
        specs = assign_priority_classes(specs, cfg, np.random.default_rng(class_ss))
    specs = apply_arrivals(specs, cfg, np.random.default_rng(arrival_ss))
    return sorted(specs, key=lambda s: s.arrival_time)


@pytest.mark.parametrize("overrides", [
    {"arrival": "poisson", "request_rate": 5.0},
    {"arrival": "burst", "num_tenants": 3},
    {"arrival": "trace", "priority_classes": [PriorityClass("hi", priority=0, share=1.0),
                                              PriorityClass("lo", priority=2, share=3.0, retention_priority=10)]},
    {"arrival": "poisson", "request_rate": 2.0, "num_tenants": 2,
     "priority_classes": [PriorityClass("a", priority=1, share=1.0)]},
])
@pytest.mark.parametrize("traced", [False, True])
def test_lazy_rules_equal_the_list_rules(monkeypatch, overrides, traced):
    """Arrival rule, tenants and classes drawn as arrays give the specs, and the order, that the
    list path gives; with a trace's own unsorted times too."""
    n = 40
    times = np.random.default_rng(5).uniform(0, 10, n).round(1) if traced else None
    src = _source(n, times)
    from apcsim.workloads import base

    name = "_stream_test_workload"
    cfg_cls = dataclasses.make_dataclass("StreamTestConfig", [("name", str, name)], bases=(base.WorkloadConfig,))
    monkeypatch.setitem(base.WORKLOADS, name, base.WorkloadEntry(name, cfg_cls, lambda cfg, ctx: src))
    cfg = cfg_cls(**overrides)
    w = open_workload(cfg, vocab_size=VOCAB, seed_seq=np.random.SeedSequence(9))
    want = _as_list_rules(src, cfg, np.random.SeedSequence(9))
    got = w.specs()
    assert [s.request_id for s in got] == [s.request_id for s in want]
    for a, b in zip(got, want):
        for f in dataclasses.fields(RequestSpec):
            if f.name != "prompt_token_ids":
                assert getattr(a, f.name) == getattr(b, f.name), (a.request_id, f.name)
        np.testing.assert_array_equal(a.prompt_token_ids, b.prompt_token_ids)
    assert w.by_class == bool(cfg.priority_classes)


def test_a_frontend_makes_each_spec_when_the_previous_falls_due():
    """Only the next request to arrive exists before it is due (a million-request run holds the
    requests in flight, not the workload)."""
    from apcsim.loop import Frontend

    made = []
    src = _source(6, np.arange(6, dtype=np.float64))
    inner = src.make
    src = dataclasses.replace(src, make=lambda i, **kw: made.append(i) or inner(i, **kw))

    class Sched:
        def __init__(self):
            self.got = []

        def add_request(self, r, t):
            self.got.append((r.request_id, r.index, t))
            return True

    sched = Sched()
    fe = Frontend(Workload(source=src), sched)
    assert made == [0] and fe.next_due_time == 0.0
    fe.deliver(2.5)
    assert made == [0, 1, 2, 3] and sched.got == [("r0", 0, 0.0), ("r1", 1, 1.0), ("r2", 2, 2.0)]
    fe.deliver(10.0)
    assert made == list(range(6)) and not fe.has_future_requests and fe.next_due_time == float("inf")


def test_rag_requests_asked_out_of_order_are_the_same():
    """rag draws request after request from one stream; asking for an earlier one replays it."""
    from apcsim.workloads.rag import RagConfig, build

    cfg = RagConfig(num_requests=12, num_documents=30, chunk_tokens=4, chunks_per_request=3)

    def source():
        return build(cfg, BuildContext(VOCAB, np.random.default_rng(4), 0))

    in_order = [source().make(i) for i in range(12)]  # a fresh source each: every one from the start
    src = source()
    for i in (3, 7, 2, 11, 0, 5):
        got = src.make(i)
        assert got.request_id == in_order[i].request_id
        np.testing.assert_array_equal(got.prompt_token_ids, in_order[i].prompt_token_ids)


@pytest.mark.parametrize("name, overrides, most_alive", [
    ("shared_prefix", ["workload.num_requests=3000", "workload.input_tokens=32", "workload.output_tokens=8",
                       "workload.request_rate=50"], 300),
    # The bundled trace's first 600 requests, shortened and slowed so that few are in flight.
    ("mooncake", ["workload.num_requests=600", "workload.length_scale=0.0625", "workload.time_scale=8"], 50),
])
def test_a_long_run_holds_only_the_specs_in_flight(monkeypatch, name, overrides, most_alive):
    """simulate() streams the workload: specs alive at once stay near the number in flight, far
    below the workload's size, and the run's outcome is the materialised run's."""
    import gc
    import weakref

    from apcsim.cli.compose import compose_config
    from apcsim.run import simulate
    from apcsim.workloads import base

    entry = base.WORKLOADS[name]
    real_build = entry.build
    alive, peak = [0], [0]

    def counting_build(cfg, ctx):
        src = real_build(cfg, ctx)

        def make(i, **fields):
            spec = src.make(i, **fields)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(spec, lambda: alive.__setitem__(0, alive[0] - 1))
            return spec
        return dataclasses.replace(src, make=make)

    monkeypatch.setitem(base.WORKLOADS, name, dataclasses.replace(entry, build=counting_build))
    overrides = [f"workload={name}", *overrides, "+policy=lru"]
    gc.disable()  # refcounts free the specs; no collector pass is needed to see them go
    try:
        streamed = simulate(compose_config(overrides)).metrics
    finally:
        gc.enable()
    assert 0 < peak[0] < most_alive, peak[0]
    kept = simulate(compose_config(overrides), keep_requests=True).metrics  # every spec made up front
    assert kept == streamed
