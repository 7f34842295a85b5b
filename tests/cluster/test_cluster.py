"""A cluster of replicas behind a router: each router's documented behaviour (on fake replicas,
then in whole runs), the shared clock's bookkeeping, and the cluster's outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest

from apcsim.cli.compose import compose_config
from apcsim.errors import ConfigError
from apcsim.run import simulate
from policies.registry import ROUTING_POLICIES
from policies.routing.base import RouterContext
from tests.helpers import ROOT

ROOT_CONF = ROOT / "apcsim" / "conf"
SMALL = ["hardware=a100", "model=llama3_8b", "num_gpu_blocks=600", "progress=off", "+policy=lru"]
MULTITURN = ["workload=multiturn", "workload.num_conversations=12", "workload.turns=3",
             "workload.output_tokens=32", "workload.think_time_s=0.5"]


# -- routers on fake replicas -------------------------------------------------------------------
@dataclass
class FakeRequest:
    request_id: str = "r"
    session_id: str = "s"
    prompt_len: int = 64
    output_len: int = 8
    keys: list = field(default_factory=lambda: [1, 2, 3])

    def prompt_block_keys(self):
        return self.keys


@dataclass
class FakeReplica:
    index: int
    num_blocks: int = 100
    requests_in_flight: int = 0
    tokens_in_flight: int = 0
    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0
    held: set = field(default_factory=set)

    def cached_prefix_blocks(self, request):
        n = 0
        for k in request.prompt_block_keys():
            if k not in self.held:
                break
            n += 1
        return n


def make(name, n=4, **overrides):
    entry = ROUTING_POLICIES[name]
    ctx = RouterContext(num_replicas=n, block_size=16, replica_blocks=(100,) * n,
                        seed_seq=np.random.SeedSequence(0, spawn_key=(2,)))
    return entry.cls(entry.config_cls(**overrides), ctx), [FakeReplica(i) for i in range(n)]


def test_every_router_is_registered_with_a_typed_config():
    assert {"round_robin", "random", "least_loaded", "session_affinity", "approx_prefix", "precise_prefix",
            "weighted"} <= set(ROUTING_POLICIES)
    for name, entry in ROUTING_POLICIES.items():
        assert entry.config_cls().name == name and entry.cls.__doc__


def test_round_robin_cycles():
    router, reps = make("round_robin", 3)
    assert [router.route(FakeRequest(), reps) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_random_is_seeded_and_reaches_every_replica():
    a, reps = make("random", 4)
    b, _ = make("random", 4)
    picks = [a.route(FakeRequest(), reps) for _ in range(200)]
    assert picks == [b.route(FakeRequest(), reps) for _ in range(200)]
    assert set(picks) == {0, 1, 2, 3}


def test_least_loaded_picks_the_least_loaded():
    router, reps = make("least_loaded", 4)
    for r, load in zip(reps, (5, 2, 7, 2)):
        r.requests_in_flight = load
    reps[1].tokens_in_flight, reps[3].tokens_in_flight = 900, 100
    assert router.route(FakeRequest(), reps) == 3  # fewest requests; tie -> fewer tokens
    by_tokens, reps = make("least_loaded", 3, by="tokens")
    for r, (req, tok) in zip(reps, ((1, 500), (9, 50), (0, 400))):
        r.requests_in_flight, r.tokens_in_flight = req, tok
    assert by_tokens.route(FakeRequest(), reps) == 1


def test_session_affinity_keeps_a_session_and_spreads_sessions():
    router, reps = make("session_affinity", 8)
    for s in range(50):
        first = router.route(FakeRequest(session_id=f"s{s}"), reps)
        reps[first].requests_in_flight += 10  # load does not move it (guard off)
        assert all(router.route(FakeRequest(session_id=f"s{s}", keys=[s, t]), reps) == first for t in range(3))
    assert len({router.route(FakeRequest(session_id=f"x{s}"), reps) for s in range(200)}) == 8


def test_session_affinity_by_prefix_and_its_bounded_load_guard():
    router, reps = make("session_affinity", 4, key="prefix", prefix_blocks=2)
    k = router.route(FakeRequest(session_id="a", keys=[7, 8, 1]), reps)
    assert router.route(FakeRequest(session_id="b", keys=[7, 8, 2, 3]), reps) == k  # same first two blocks
    guarded, reps = make("session_affinity", 4, max_load_factor=1.25)
    k = guarded.route(FakeRequest(session_id="a"), reps)
    reps[k].requests_in_flight = 10  # mean 2.5: cap 1.25 * 3.5
    assert guarded.route(FakeRequest(session_id="a"), reps) != k
    assert guarded.stats() == {"guard_redirects": 1}


def test_precise_prefix_follows_the_real_cache_unless_the_guard_fires():
    router, reps = make("precise_prefix", 4, max_waiting=4)
    reps[2].held = {1, 2, 3}
    reps[2].requests_in_flight = 50  # busiest, but it holds the whole prefix
    reps[1].held = {1, 2}
    assert router.route(FakeRequest(), reps) == 2
    reps[2].num_waiting = 5  # over the guard: the best of the rest
    assert router.route(FakeRequest(), reps) == 1
    for r in reps:
        r.num_waiting = 9  # everyone over it: the guard cannot help, the cache decides
    assert router.route(FakeRequest(), reps) == 2
    reps[0].requests_in_flight = 0
    for r in reps[1:]:
        r.requests_in_flight = 3
    assert router.route(FakeRequest(keys=[42]), reps) == 0  # nobody holds it: least loaded


def test_approx_prefix_learns_from_its_own_decisions_and_balances():
    router, reps = make("approx_prefix", 4, balance_abs_threshold=4, balance_rel_threshold=1.5)
    k = router.route(FakeRequest(keys=[1, 2, 3, 4]), reps)
    reps[k].requests_in_flight = 3  # more loaded, yet the index says it holds the prefix
    assert router.route(FakeRequest(keys=[1, 2, 3, 9]), reps) == k
    # a new prefix goes to a replica whose index is empty (smallest), not to k
    assert router.route(FakeRequest(keys=[50, 51]), reps) != k
    reps[k].requests_in_flight = 20  # imbalanced: the guard routes by load
    assert router.route(FakeRequest(keys=[1, 2, 3, 4]), reps) != k
    assert router.stats()["guard_fired"] == 1


def test_weighted_scorer_trades_prefix_against_load():
    router, reps = make("weighted", 2, prefix_weight=2.0, queue_weight=1.0, kv_weight=1.0)
    reps[0].held = {1, 2, 3}
    reps[0].num_waiting, reps[1].num_waiting = 4, 0
    assert router.route(FakeRequest(), reps) == 0  # 2 + 0 + 1 beats 0 + 1 + 1
    queue_heavy, reps2 = make("weighted", 2, prefix_weight=0.5, queue_weight=1.0, kv_weight=1.0)
    reps2[0].held = {1, 2, 3}
    reps2[0].num_waiting = 4
    assert queue_heavy.route(FakeRequest(), reps2) == 1


# -- whole runs ---------------------------------------------------------------------------------
def run(*overrides, **kw):
    return simulate(compose_config([*SMALL, *overrides]), **kw)


def rows_of(out):
    return out.collector.log.rows


def test_session_affinity_sends_every_turn_of_a_conversation_to_one_replica():
    out = run(*MULTITURN, "num_replicas=4", "router=session_affinity")
    by_conv = defaultdict(set)
    for row in rows_of(out):
        by_conv[row["request_id"].rsplit("-", 1)[0]].add(row["replica"])
    assert len(by_conv) == 12 and all(len(reps) == 1 for reps in by_conv.values())
    assert len(set().union(*by_conv.values())) > 1  # and the conversations are spread


def test_precise_prefix_never_leaves_the_replica_holding_the_prefix(monkeypatch):
    """Every decision in a run goes to a replica holding the most leading blocks of the prompt
    among those the guard allows; without the guard, among all replicas."""
    from policies.routing.precise_prefix import PrecisePrefixRouter

    checked, route = [], PrecisePrefixRouter.route

    def checking(self, request, replicas):
        held = [r.cached_prefix_blocks(request) for r in replicas]  # before the decision
        k = route(self, request, replicas)
        allowed = self.candidates(replicas)
        assert held[k] == max(held[i] for i in allowed), (request.request_id, k, held)
        if held[k]:
            checked.append(request.request_id)
        return k

    monkeypatch.setattr(PrecisePrefixRouter, "route", checking)
    out = run(*MULTITURN, "num_replicas=3", "router=precise_prefix")
    assert out.metrics["num_finished"] == 36 and len(checked) > 12  # later turns found their prefix
    out = run(*MULTITURN, "num_replicas=3", "router=precise_prefix", "router.max_waiting=0")
    assert out.metrics["num_finished"] == 36


def test_cluster_outputs_add_up_and_name_the_replica():
    out = run("workload=shared_prefix", "workload.num_requests=40", "workload.output_tokens=16", "num_replicas=4",
              "router=round_robin")
    m = out.metrics
    assert m["num_finished"] == 40 and m["config"]["num_replicas"] == 4 and m["config"]["router"] == "round_robin"
    reps = m["cluster"]["replicas"]
    assert [r["requests_routed"] for r in reps] == [10, 10, 10, 10]
    assert sum(r["num_finished"] for r in reps) == 40
    assert m["cluster"]["load_imbalance"]["requests"] == 1.0
    assert m["prefix_cache_hits"] <= m["prefix_cache_queries"]
    assert sorted({row["replica"] for row in rows_of(out)}) == [0, 1, 2, 3]


def test_least_loaded_run_and_concurrency_gate_are_cluster_wide():
    out = run(*MULTITURN, "num_replicas=3", "router=least_loaded", "max_concurrency=4")
    assert out.metrics["num_finished"] == 36
    starts = sorted((float(r["arrival_s"]), float(r["finish_s"])) for r in rows_of(out))
    # at most 4 requests in flight at once, over the whole cluster
    events = sorted([(a, 1) for a, _ in starts] + [(f, -1) for _, f in starts], key=lambda e: (e[0], e[1]))
    depth = peak = 0
    for _, d in events:
        depth += d
        peak = max(peak, depth)
    assert peak <= 4


def test_skipping_quiet_stretches_changes_no_routing_decision():
    a = run(*MULTITURN, "num_replicas=3", "router=precise_prefix")
    b = run(*MULTITURN, "num_replicas=3", "router=precise_prefix", "skip_quiet=false")
    ra = {r["request_id"]: r for r in rows_of(a)}
    rb = {r["request_id"]: r for r in rows_of(b)}
    assert {k: r["replica"] for k, r in ra.items()} == {k: r["replica"] for k, r in rb.items()}
    assert {k: r["cached_tokens"] for k, r in ra.items()} == {k: r["cached_tokens"] for k, r in rb.items()}
    for k in ra:
        assert ra[k]["finish_s"] == pytest.approx(rb[k]["finish_s"], rel=1e-9)


def test_one_replica_ignores_the_router():
    a = run("workload.num_requests=30", "workload.output_tokens=8")
    b = run("workload.num_requests=30", "workload.output_tokens=8", "router=random", "num_replicas=1")
    assert json.dumps(a.metrics) == json.dumps(b.metrics)
    assert "replica" not in rows_of(b)[0]


def test_cluster_config_errors():
    with pytest.raises(ConfigError, match="num_replicas"):
        run("num_replicas=0")
    with pytest.raises(ConfigError, match="belady"):
        simulate(compose_config([*SMALL[:-1], "+policy=belady", "num_replicas=2"]))
    with pytest.raises(ConfigError, match="router.by"):
        run("num_replicas=2", "router=least_loaded", "router.by=bytes")


def test_pooled_bound_is_reported_and_belady_beats_lru():
    out = run(*MULTITURN, "num_replicas=3", "cluster_bound=true", "router=random")
    b = out.metrics["cluster"]["pooled_bound"]
    assert b["capacity_blocks"] == 3 * 599  # num_gpu_blocks less the null block, per replica
    assert 0 < b["lru_hit_rate"] <= b["belady_hit_rate"] <= 1
    # a random router splits conversations; one pooled cache that holds everything does not
    assert b["lru_hit_rate"] > out.metrics["prefix_cache_hit_rate"]


def test_replay_bound_on_a_tiny_stream():
    from apcsim.cluster.bound import belady_hit_rate, lru_hit_rate

    # three requests of 2 blocks each (block size 1: hits count blocks), prompts [a,b], [c,d], [a,b]
    stream = [([1, 2], 2, 2), ([3, 4], 2, 2), ([1, 2], 2, 2)]
    assert lru_hit_rate(stream, 4, 1) == pytest.approx(2 / 6)  # room for all: the third hits both
    assert lru_hit_rate(stream, 2, 1) == 0.0  # [c,d] pushed [a,b] out
    assert belady_hit_rate(stream, 2, 1) == pytest.approx(2 / 6)  # [c,d] is never reused: not cached


def test_cli_cluster_run_writes_the_replica_column(tmp_path):
    d = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "apcsim", *SMALL, "workload.num_requests=20", "workload.output_tokens=8",
                        "num_replicas=2", "router=weighted", "report.plotlyjs=cdn", f"hydra.run.dir={d}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with open(d / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {r["replica"] for r in rows} <= {"0", "1"}
    assert "Replicas" in (d / "report.html").read_text()
    bad = subprocess.run([sys.executable, "-m", "apcsim", "num_replicas=2", "router=nope", f"hydra.run.dir={d}x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_router_zoo_preset_names_every_router():
    import yaml

    from apcsim.cli.config_keys import GROUP_SELECTORS

    preset = yaml.safe_load((ROOT_CONF / "experiment" / "router_zoo.yaml").read_text())
    params = preset["hydra"]["sweeper"]["params"]
    assert set(params["router"].split(",")) == set(ROUTING_POLICIES)
    assert GROUP_SELECTORS["router"] == "router"


def test_heterogeneous_replicas_get_their_own_cache_and_hardware():
    out = run("workload.num_requests=40", "workload.output_tokens=8", "num_replicas=2", "router=least_loaded",
              "cost_model=roofline", "replica_hardware=[a100,h100]", "replica_num_gpu_blocks=[300,900]")
    reps = out.metrics["cluster"]["replicas"]
    assert [r["num_gpu_blocks"] for r in reps] == [299, 899]  # less the null block each
    assert out.metrics["config"]["replica_hardware"] == ["a100", "h100"]
    assert out.metrics["num_finished"] == 40
    schedulers = out.simulation.schedulers
    assert schedulers[0] is not schedulers[1]
    ex = out.simulation.executors
    assert ex[0].cost is not ex[1].cost  # the H100 replica steps on its own cost model
    with pytest.raises(ConfigError, match="one entry per replica"):
        run("num_replicas=2", "replica_num_gpu_blocks=[300]")
    with pytest.raises(ConfigError, match="unknown hardware preset"):
        run("num_replicas=2", "cost_model=roofline", "replica_hardware=[a100,tpu]")


def test_a_homogeneous_cluster_has_one_core_per_replica():
    out = run("workload.num_requests=12", "workload.output_tokens=8", "num_replicas=3")
    s = out.simulation.schedulers
    assert len({id(x) for x in s}) == 3 and len({id(x.kv.pool) for x in s}) == 3
