"""Tenant isolation and block-key hashing: a cache salt (from the request, a trace field or
`workload.num_tenants`) keeps tenants' blocks apart; every hash_algo gives the same hits; and
`verify_tokens` turns the false hits of a colliding hash into counted misses."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from apcsim.cli.compose import compose_config
from apcsim.core.block_hash import HASH_ALGOS, HashAlgo
from apcsim.core.request import RequestSpec
from apcsim.errors import ConfigError, TraceError
from apcsim.run import simulate
from apcsim.sim.simulator import Simulation
from tests.helpers.serving import COST, build_scheduler, unit_recompute

PUBLIC_ALGOS = ("xxh3_64", "xxh3_128", "sha256")


def _run(specs, *, hash_algo="xxh3_64", verify_tokens=False, bs=4, num_blocks=256):
    sched = build_scheduler("lru", "fcfs", num_blocks=num_blocks, bs=bs, recompute_cost=unit_recompute,
                            kv_options={"hash_algo": hash_algo, "verify_tokens": verify_tokens})
    sim = Simulation(specs, sched, COST, max_concurrency=1, verify_every_step=True)
    sim.run()
    return {r.request_id: r.num_cached_tokens for r in sim.requests}, sched


def _spec(rid, tokens, salt=None):
    return RequestSpec(rid, np.asarray(tokens, dtype=np.int32), 2, cache_salt=salt)


@pytest.mark.parametrize("algo", PUBLIC_ALGOS)
def test_tenants_never_hit_each_others_blocks(algo):
    prompt = list(range(100, 141))  # 41 tokens: 10 full blocks of 4 can hit
    specs = [_spec("a0", prompt, "A"), _spec("b0", prompt, "B"), _spec("a1", prompt, "A"),
             _spec("b1", prompt, "B"), _spec("n0", prompt), _spec("n1", prompt)]
    cached, _ = _run(specs, hash_algo=algo)
    assert cached["a0"] == 0 and cached["b0"] == 0, "another tenant's identical prompt must miss"
    assert cached["a1"] == 40 and cached["b1"] == 40, "the same salt shares"
    assert cached["n0"] == 0 and cached["n1"] == 40, "no salt is its own (shared) tenant"


def test_hash_algos_give_identical_results():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 50, 64)
    specs = [_spec(f"r{i}", np.concatenate([base[: rng.integers(1, 64)], rng.integers(0, 3, 9)]),
                   salt=None if i % 3 else "t") for i in range(30)]
    results = [_run(specs, hash_algo=a)[0] for a in PUBLIC_ALGOS]
    assert results[0] == results[1] == results[2]
    assert sum(results[0].values()) > 0


def test_sha256_key_is_the_canonical_encoding():
    """Key of block 0 = sha256(root (32 bytes, big-endian) + int32 little-endian tokens): the same
    on any machine or Python version (Python's own hash() would not be)."""
    algo = HASH_ALGOS["sha256"]
    toks = np.array([1, 2, 3, 70000], dtype=np.int32)
    root = int.from_bytes(hashlib.sha256(b"salt:t1").digest(), "big")
    assert algo.root("t1") == root and algo.root(None) == 0
    want = int.from_bytes(hashlib.sha256(root.to_bytes(32, "big") + toks.astype("<i4").tobytes()).digest(), "big")
    from apcsim.core.kv_cache_manager import KVCacheManager  # noqa: F401  (the key path below)
    _, sched = _run([_spec("x", list(toks) + [5], "t1")], hash_algo="sha256")
    assert sched.kv.pool.cached.get(want) is not None


# A deliberately terrible hash: a key depends only on the parent key and the block's first token
# mod 2, so different prompts collide all the time.
WEAK = HashAlgo("weak_test", 8, lambda salt: 0 if salt is None else 1,
                lambda parent, tokens: (parent * 31 + 7 + (tokens[0] & 1)) & 0xFF)


@pytest.fixture
def weak_hash(monkeypatch):
    monkeypatch.setitem(HASH_ALGOS, WEAK.name, WEAK)
    return WEAK.name


def test_weak_hash_gives_false_hits_and_verify_tokens_turns_them_into_misses(weak_hash):
    a = [2, 4, 6, 8] * 5 + [9]  # even first tokens: the same weak keys as b's
    b = [10, 12, 14, 16] * 5 + [9]
    specs = [_spec("a", a), _spec("b", b), _spec("a2", a)]
    unverified, _ = _run(specs, hash_algo=weak_hash)
    assert unverified["b"] == 20, "the weak hash must collide (else this test proves nothing)"
    verified, sched = _run(specs, hash_algo=weak_hash, verify_tokens=True)
    assert verified == {"a": 0, "b": 0, "a2": 20}
    assert sched.stats.hash_collisions == 1  # b's lookup stopped at a colliding block
    # A different tenant with the same tokens collides on the weak root too; verify catches it.
    specs = [_spec("a", a, "s1"), _spec("c", a, "s2")]
    assert _run(specs, hash_algo=weak_hash)[0]["c"] == 20
    assert _run(specs, hash_algo=weak_hash, verify_tokens=True)[0]["c"] == 0


def test_verify_tokens_changes_nothing_with_a_good_hash():
    common = ["workload=system_prompt", "workload.num_requests=6", "+policy=lru", "report.enabled=false"]
    plain = simulate(compose_config(common)).metrics
    checked = simulate(compose_config(common + ["verify_tokens=true"])).metrics
    assert checked.pop("hash_collisions") == 0
    assert checked == plain


def test_unknown_hash_algo_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown hash_algo 'md5'; known: xxh3_64, xxh3_128, sha256"):
        simulate(compose_config(["hash_algo=md5"]))


# -- tenants from traces and from the workload option --------------------------------------------
def _mooncake(tmp_path, rows, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _row(t, **extra):
    return {"timestamp": t, "input_length": 1024, "output_length": 4, "hash_ids": [1, 2], **extra}


@pytest.mark.parametrize("field", ["cache_salt", "tenant"])
def test_mooncake_tenant_field_isolates(tmp_path, field):
    p = _mooncake(tmp_path, [_row(0, **{field: "x"}), _row(1000, **{field: 7}), _row(2000, **{field: "x"})])
    out = simulate(compose_config(["workload=mooncake", f"workload.path={p}", "+policy=lru", "num_gpu_blocks=4000",
                                   "max_concurrency=1"]), keep_requests=True)
    cached = [r.num_cached_tokens for r in out.simulation.requests]
    assert [r.spec.cache_salt for r in out.simulation.requests] == ["x", "7", "x"]
    assert cached[0] == 0 and cached[1] == 0 and cached[2] > 0


def test_trace_salt_errors(tmp_path):
    from apcsim.workloads.mooncake import read_rows

    p = _mooncake(tmp_path, [_row(0, tenant="a", cache_salt="b")])
    with pytest.raises(TraceError, match=r"line 1: cache_salt 'b' and tenant 'a' disagree"):
        read_rows(p, "ms", None)
    p = _mooncake(tmp_path, [_row(0), _row(1, tenant=[1])])
    with pytest.raises(TraceError, match=r"line 2: tenant must be a string or an integer"):
        read_rows(p, "ms", None)


def test_azure_tenant_column(tmp_path):
    p = tmp_path / "az.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,tenant\n"
                 "2023-11-16 18:00:00.0,100,5,alice\n2023-11-16 18:00:01.0,100,5,\n2023-11-16 18:00:02.0,100,5,bob\n")
    out = simulate(compose_config(["workload=azure", f"workload.path={p}"]), keep_requests=True)
    assert [r.spec.cache_salt for r in out.simulation.requests] == ["alice", None, "bob"]


def test_num_tenants_assigns_seeded_salts_and_splits_the_cache():
    common = ["workload=shared_prefix", "workload.num_requests=40", "workload.input_tokens=256",
              "workload.output_tokens=4", "+policy=lru", "max_concurrency=1", "report.enabled=false"]
    one = simulate(compose_config(common), keep_requests=True)
    four = simulate(compose_config(common + ["workload.num_tenants=4"]), keep_requests=True)
    again = simulate(compose_config(common + ["workload.num_tenants=4"]), keep_requests=True)
    salts = [r.spec.cache_salt for r in four.simulation.requests]
    assert set(salts) == {f"tenant-{k}" for k in range(4)}
    assert salts == [r.spec.cache_salt for r in again.simulation.requests], "seeded"
    # Each tenant's first request misses the shared prefix (64 shared tokens = 4 blocks of 16).
    shared = 64
    first_of = {}
    for r in four.simulation.requests:
        first_of.setdefault(r.spec.cache_salt, r)
        assert r.num_cached_tokens == (0 if first_of[r.spec.cache_salt] is r else shared)
    assert one.metrics["prefix_cache_hits"] - four.metrics["prefix_cache_hits"] == 3 * shared


def test_num_tenants_keeps_a_conversation_in_one_tenant():
    out = simulate(compose_config(["workload=multiturn", "workload.num_conversations=8", "workload.turns=3",
                                   "workload.num_tenants=3", "report.enabled=false"]), keep_requests=True)
    by_id = {r.request_id: r for r in out.simulation.requests}
    for r in by_id.values():
        if r.spec.parent_id is not None:
            assert r.spec.cache_salt == by_id[r.spec.parent_id].spec.cache_salt


def test_num_tenants_conflicts_with_trace_salts(tmp_path):
    p = _mooncake(tmp_path, [_row(0, tenant="a")])
    with pytest.raises(ConfigError, match="num_tenants=2 conflicts"):
        simulate(compose_config(["workload=mooncake", f"workload.path={p}", "workload.num_tenants=2"]))
    with pytest.raises(ConfigError, match="num_tenants must be an integer >= 1, got 0"):
        simulate(compose_config(["workload.num_tenants=0"]))
