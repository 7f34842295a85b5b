"""Content-id keys (apcsim/core/content_ids.py) give exactly the hits of token keys.

Every bundled trace with content ids (the Mooncake trace) and hand-made traces covering salts,
padded (strict_lengths=false) prompts, per-block content-hash ids (the GMI style: an id after
different predecessors), length_scale and block sizes that do not divide the id span run twice,
once keyed from ids and once from tokens, and must agree on every request's hits and every metric.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import apcsim.run as run_mod
from apcsim.cli.compose import compose_config
from apcsim.core.block_hash import get_hash_algo
from apcsim.core.content_ids import ContentChain, ContentIds, content_keys
from apcsim.core.kv_cache_manager import chain_keys, prompt_keys
from apcsim.run import simulate
from apcsim.workloads.base import build_workload
from apcsim.workloads.mooncake import MooncakeConfig


def _run(overrides, content: bool, monkeypatch):
    base = run_mod.kv_options
    monkeypatch.setattr(run_mod, "kv_options", lambda cfg: {**base(cfg), "content_keys": content})
    out = simulate(compose_config(overrides + ["report.enabled=false"]), keep_requests=True)
    monkeypatch.setattr(run_mod, "kv_options", base)
    return out


def _assert_same_hits(overrides, monkeypatch, *, expect_hits=True):
    ids = _run(overrides, True, monkeypatch)
    tokens = _run(overrides, False, monkeypatch)
    assert ids.simulation.scheduler.kv.use_content_keys and not tokens.simulation.scheduler.kv.use_content_keys
    per_request = [(r.request_id, r.num_cached_tokens, r.num_preemptions) for r in ids.simulation.requests]
    assert per_request == [(r.request_id, r.num_cached_tokens, r.num_preemptions) for r in tokens.simulation.requests]
    assert ids.metrics == tokens.metrics
    assert (ids.metrics["prefix_cache_hits"] > 0) == expect_hits
    return ids


BUNDLED = ["workload=mooncake", "+policy=lru"]


@pytest.mark.parametrize("extra", [
    ["workload.length_scale=0.0625", "block_size=16"],  # the whole trace, 32-token ids: 2 blocks each
    ["workload.num_requests=300", "block_size=16", "num_gpu_blocks=20000"],  # full lengths, evicting
    ["workload.num_requests=300", "block_size=48"],  # 48 does not divide 512: token keys for all
])
def test_bundled_mooncake_trace_same_hits(extra, monkeypatch):
    out = _assert_same_hits(BUNDLED + extra, monkeypatch)
    if "num_gpu_blocks=20000" in extra:
        assert out.simulation.scheduler.kv.pool.num_evictions > 0, "the case meant to evict did not"


@pytest.mark.parametrize("policy", ["leaf_lru", "belady", "cost_aware", "s3fifo"])
def test_bundled_trace_same_hits_under_other_policies(policy, monkeypatch):
    _assert_same_hits(["workload=mooncake", f"+policy={policy}", "workload.length_scale=0.0625",
                       "workload.num_requests=1500", "num_gpu_blocks=3000"], monkeypatch)


AZURE = ["workload=azure", "workload.num_requests=400", "+policy=lru"]


@pytest.mark.parametrize("extra", [
    ["block_size=16", "num_gpu_blocks=1200"],  # evicting and preempting all the time
    ["block_size=32", "num_gpu_blocks=20000", "workload.num_tenants=3"],
    ["block_size=48", "num_gpu_blocks=1200"],  # 48 does not divide 512: token keys for all
    ["block_size=16", "num_gpu_blocks=1200", "workload.path=azure_llm_2023/AzureLLMInferenceTrace_code.csv"],
])
def test_azure_rows_same_decisions(extra, monkeypatch):
    """Azure prompts are named by their 512-token pieces: keyed from the piece ids, every
    request is served as when keyed from tokens. (Nothing hits: the rows are unique, and a
    preempted request's own blocks are gone before it is admitted again.)"""
    out = _assert_same_hits(AZURE + extra, monkeypatch, expect_hits=False)
    assert out.metrics["num_preemptions"] > 0 or "num_gpu_blocks=20000" in extra


@pytest.mark.parametrize("extra", [
    ["block_size=16", "num_gpu_blocks=2000"],  # preempted requests hit their own blocks again
    ["block_size=48", "num_gpu_blocks=660"],  # token keys
    ["block_size=16", "num_gpu_blocks=2000", "scheduler.preemption=lowest_priority", "verify=true"],
    # vLLM before its keyless-first free queue: nothing is parked, a range is keyed at the free
    ["block_size=16", "num_gpu_blocks=2000", "vllm=v1_early2026", "verify=true"],
    ["block_size=8", "num_gpu_blocks=3000", "scheduler.max_num_seqs=24"],
])
def test_a_rows_own_prefix_misses_unwalked_until_it_holds_blocks(extra, monkeypatch):
    """A trace row's pieces are its own (`ContentIds.unique`), so its lookups skip the walk
    (`UNSEEN_PREFIX`) until it first holds blocks, and a finished request's parked range keeps
    nothing to key it from (`PendingKeys.free`); a preempted request walks again and finds its
    own blocks, flushing its parked range. Runs with the rows marked and unmarked make the same
    decisions (`verify=true` checks every invariant after every step)."""
    from apcsim.workloads._common import RowTokens

    overrides = AZURE + extra + ["report.enabled=false"]
    marked = simulate(compose_config(overrides), keep_requests=True)
    assert all(r.spec.content_ids.unique for r in marked.simulation.requests)
    made = RowTokens.content_ids
    monkeypatch.setattr(RowTokens, "content_ids",
                        lambda self, key, length: dataclasses.replace(made(self, key, length), unique=False))
    walked = simulate(compose_config(overrides), keep_requests=True)
    assert not any(r.spec.content_ids.unique for r in walked.simulation.requests)
    assert walked.metrics["preempted_prefix_cache_hits"] > 0, "no preempted request hit its own blocks"
    assert marked.metrics == walked.metrics
    assert ([(r.request_id, r.num_cached_tokens, r.num_preemptions, r.first_token_time, r.finish_time)
             for r in marked.simulation.requests]
            == [(r.request_id, r.num_cached_tokens, r.num_preemptions, r.first_token_time, r.finish_time)
                for r in walked.simulation.requests])


def test_only_a_rows_own_pieces_are_marked_unique():
    """`ContentIds.unique` is a promise the core acts on without checking (an own range keys
    nothing, a lookup before the first admission walks nothing): trace rows make it, and no two
    rows name the same piece; Mooncake's hash ids, which requests share, do not make it."""
    from apcsim.workloads._common import RowTokens

    rows = RowTokens(seed=3, stream=5, vocab_size=1000)
    rng = np.random.default_rng(0)
    seen: dict[int, int] = {}
    for key in rng.choice(1 << 20, size=300, replace=False).tolist() + [0, 1, (1 << 39) - 1]:
        ids = rows.content_ids(key, int(rng.integers(1, 5000)))
        assert ids.unique
        for i in np.asarray(ids.ids).tolist():
            assert seen.setdefault(i, key) == key, f"rows {seen[i]} and {key} share piece {i}"
    specs = build_workload(MooncakeConfig(num_requests=50), vocab_size=32000, seed_seq=np.random.SeedSequence(0))
    assert not any(s.content_ids.unique for s in specs if s.content_ids is not None)


def _trace(tmp_path, rows):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_salts_pads_and_per_block_content_ids_same_hits(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        # GMI style: ids name a block's content, not its prefix, so id 7 follows different ids
        ids = [int(x) for x in rng.integers(0, 12, size=int(rng.integers(1, 7)))]
        length = len(ids) * 32 + int(rng.integers(-31, 40))  # cut inside the last id, or padded past it
        rows.append({"timestamp": i * 50, "input_length": max(1, length), "output_length": int(rng.integers(1, 40)),
                     "hash_ids": ids, **({"cache_salt": f"t{i % 3}"} if i % 4 else {})})
    p = _trace(tmp_path, rows)
    for bs in (8, 16, 32, 24):  # 24 does not divide 32: token keys
        _assert_same_hits(["workload=mooncake", f"workload.path={p}", "workload.hash_block_size=32",
                           "workload.strict_lengths=false", "+policy=lru", f"block_size={bs}", "num_gpu_blocks=400"],
                          monkeypatch)


def test_content_keys_chain_like_token_keys():
    """Equal content keys exactly where token keys are equal, position by position, with the ids'
    tokens taken from the workload's own table."""
    specs = build_workload(MooncakeConfig(num_requests=200, length_scale=1 / 16), vocab_size=128256,
                           seed_seq=np.random.SeedSequence(3))
    algo = get_hash_algo("xxh3_64")
    by_content, by_tokens = {}, {}
    for s in specs:
        n = s.prompt_len // 16
        if n == 0:
            continue
        ck = prompt_keys(s, n, 16, algo, content=True)
        tk = chain_keys(s.prompt_token_ids[: n * 16], 16, algo.root(s.cache_salt))
        assert len(ck) == len(tk) == n
        assert ck != tk, "content keys were not used"
        for c, t in zip(ck, tk):
            assert by_content.setdefault(c, t) == t
            assert by_tokens.setdefault(t, c) == c


@pytest.mark.parametrize("span, block_size", [(512, 16), (64, 16), (32, 32), (48, 16), (40, 16)])
def test_a_chain_made_piece_by_piece_gives_the_keys_made_at_once(span, block_size):
    """`ContentChain.keys` in any split (a key at a time, the few-keys and the many-keys paths,
    from the middle) equals `content_keys` made in one call, whatever was asked before."""
    rng = np.random.default_rng(span + block_size)
    for trial in range(40):
        n = int(rng.integers(1, 30))
        content = ContentIds(rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64), span,
                             int(rng.integers(1, n * span + 1)), "t")
        seed = int(rng.integers(0, 2**63))
        want = content_keys(content, block_size, seed)
        assert len(want) == (0 if span % block_size else content.num_tokens // block_size)
        chain, got = ContentChain(content, block_size, seed), []
        while len(got) < len(want):
            got += chain.keys(len(got), len(got) + int(rng.choice([1, 2, 5, 30, 200])))
        assert got == want
        assert chain.keys(len(want), len(want) + 5) == []
        if want:
            a = int(rng.integers(0, len(want)))
            b = int(rng.integers(a, len(want) + 3))
            assert ContentChain(content, block_size, seed).keys(a, b) == want[a:b]
            assert chain.keys(a, b) == want[a:b]


def test_content_keys_depend_on_every_earlier_id_and_the_salt():
    def keys(ids, seed=0, span=64, n=None):
        ids = np.asarray(ids, dtype=np.int64)
        return content_keys(ContentIds(ids, span, n if n is not None else len(ids) * span, "t"), 16, seed)

    a, b = keys([1, 2, 3]), keys([9, 2, 3])
    assert len(a) == 12 and len(set(a)) == 12
    assert not set(a) & set(b), "a different first id changes every later key"
    assert keys([1, 2, 5])[:8] == a[:8] and keys([1, 2, 5])[8:] != a[8:]
    assert keys([1, 2, 3], seed=5) != a
    assert keys([1, 2, 3], n=150) == a[:9], "only full blocks within the covered tokens"
    assert keys([1, 2, 3], span=40) == [], "16 does not divide 40: the caller hashes tokens"
