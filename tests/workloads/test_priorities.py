"""Request priorities and retention priorities set by workloads and traces: trace fields and their
errors, priority classes drawn from their own stream (existing streams untouched), the shared
part's retention range and the block it reaches (TensorRT-LLM's first-token rule), requests.csv
and metrics per class, and the two behaviours the knobs exist for: under load the higher class's
TTFT p99 falls with scheduler=priority, and with priority_lru the retained system prompt outlives
the user turns."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from apcsim.cli.compose import compose_config
from apcsim.core.request import RequestSpec, TokenRetention
from apcsim.errors import ConfigError
from apcsim.outputs.files import write_outputs
from apcsim.run import simulate
from apcsim.sim.simulator import Simulation
from apcsim.workloads import build_workload
from apcsim.workloads.azure import AzureConfig
from apcsim.workloads.mooncake import MooncakeConfig
from apcsim.workloads.multiturn import MultiturnConfig
from apcsim.workloads.priorities import PriorityClass
from apcsim.workloads.rag import RagConfig
from apcsim.workloads.shared_prefix import SharedPrefixConfig
from apcsim.workloads.system_prompt import SystemPromptConfig
from tests.cli.test_bad_input import AZ_HEAD, MC_OK, _jsonl, run_cli
from tests.helpers.serving import COST, build_scheduler, unit_recompute
from tests.policies.test_policy_contract import cached_block, evict_order
from tests.policies.test_policy_zoo import pool_of

VOCAB = 128256
TWO_CLASSES = [PriorityClass("interactive", 0.25, 0, 80, 30.0), PriorityClass("batch", 0.75, 1)]
TWO_CLASSES_CLI = ("workload.priority_classes=[{name:interactive,share:0.25,priority:0},"
                   "{name:batch,share:0.75,priority:1}]")


def build(cfg, seed=0):
    return build_workload(cfg, vocab_size=VOCAB, seed_seq=np.random.SeedSequence(seed))


# -- traces ---------------------------------------------------------------------------------------
def test_trace_fields_reach_the_specs(tmp_path):
    mc = tmp_path / "t.jsonl"
    mc.write_text(_jsonl({**MC_OK, "priority": -2, "retention_priority": 90, "retention_duration_s": 1.5},
                         {**MC_OK, "timestamp": 1, "priority": 3}, {**MC_OK, "timestamp": 2}))
    a, b, c = build(MooncakeConfig(path=str(mc)))
    assert (a.priority, a.retention_priority, a.retention_duration_s) == (-2, 90, 1.5)
    assert (b.priority, b.retention_priority, c.priority, c.retention_priority) == (3, None, 0, None)
    az = tmp_path / "t.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,priority,retention_priority,retention_duration_s\n"
                  "2023-11-16 18:00:00.0,100,5,1,20,\n2023-11-16 18:00:01.0,100,5,,,\n")
    a, b = build(AzureConfig(path=str(az)))
    assert (a.priority, a.retention_priority, a.retention_duration_s) == (1, 20, None)
    assert (b.priority, b.retention_priority) == (0, None)


MC_BAD = [
    ({"priority": 1.5}, "line 2: priority must be an integer, got 1.5"),
    ({"priority": True}, "line 2: priority must be an integer, got true"),
    ({"priority": "high"}, "line 2: priority must be an integer, got 'high'"),
    ({"retention_priority": 101}, "line 2: retention_priority must be an integer in 0..100, got 101"),
    ({"retention_priority": -1}, "line 2: retention_priority must be an integer in 0..100, got -1"),
    ({"retention_priority": 50, "retention_duration_s": 0}, "line 2: retention_duration_s must be a finite number"),
    ({"retention_priority": 50, "retention_duration_s": "Infinity"}, "line 2: retention_duration_s must be a finite number"),
    ({"priority": "3"}, "line 2: priority must be an integer, got '3'"),
    ({"retention_duration_s": 5}, "line 2: retention_duration_s needs a retention_priority"),
]


@pytest.mark.parametrize("extra,expect", MC_BAD, ids=[e for _, e in MC_BAD])
def test_bad_trace_priorities_are_one_line_with_file_and_line(tmp_path, monkeypatch, capsys, extra, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text(_jsonl(MC_OK, {**MC_OK, **extra}))
    code, err = run_cli(["workload=mooncake", "workload.path=t.jsonl"], tmp_path / "run", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "t.jsonl, " + expect in err.lower()


def test_infinite_duration_in_json_and_bad_csv_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text(_jsonl({**MC_OK, "retention_priority": 9}).replace("}", ', "retention_duration_s": Infinity}'))
    code, err = run_cli(["workload=mooncake", "workload.path=t.jsonl"], tmp_path / "a", capsys)
    # The JSON reader refuses Infinity before the field is read.
    assert code == 2 and "t.jsonl, line 1: not valid JSON (Infinity is not a JSON number)" in err
    for cells, expect in [("x,,", "line 2: priority must be an integer, got 'x'"),
                          (",200,", "line 2: retention_priority must be an integer in 0..100, got 200"),
                          (",5,nan", "line 2: retention_duration_s must be a finite number")]:
        (tmp_path / "t.csv").write_text(AZ_HEAD.strip() + ",priority,retention_priority,retention_duration_s\n"
                                        f"2023-11-16 18:00:00.0,100,5,{cells}\n")
        code, err = run_cli(["workload=azure", "workload.path=t.csv"], tmp_path / "b", capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "t.csv, " + expect in err, err


# -- synthetic workloads: classes and the shared part ---------------------------------------------
def test_classes_come_from_their_own_stream_and_follow_conversations():
    plain = build(MultiturnConfig(num_conversations=200, turns=3, request_rate=2.0))
    classed = build(MultiturnConfig(num_conversations=200, turns=3, request_rate=2.0, priority_classes=TWO_CLASSES))
    # Tokens and arrivals are what they were without classes: the class draws use a new stream.
    assert [s.request_id for s in plain] == [s.request_id for s in classed]
    assert all(np.array_equal(a.prompt_token_ids, b.prompt_token_ids) and a.arrival_time == b.arrival_time
               for a, b in zip(plain, classed))
    assert all(s.priority == 0 and s.priority_class is None for s in plain)
    by_id = {s.request_id: s for s in classed}
    for s in classed:
        if s.parent_id is not None:
            assert s.priority_class == by_id[s.parent_id].priority_class
        want = (0, 80, 30.0) if s.priority_class == "interactive" else (1, None, None)
        assert (s.priority, s.retention_priority, s.retention_duration_s) == want
    share = np.mean([by_id[f"mt-{c}-0"].priority_class == "interactive" for c in range(200)])
    assert 0.15 < share < 0.35  # 200 draws of a 25 % share
    again = build(MultiturnConfig(num_conversations=200, turns=3, request_rate=2.0, priority_classes=TWO_CLASSES))
    assert [s.priority_class for s in again] == [s.priority_class for s in classed]


@pytest.mark.parametrize("cfg,shared", [
    (SystemPromptConfig(system_prompt_tokens=100), 100),
    (SharedPrefixConfig(num_requests=4, input_tokens=64, shared_fraction=0.25), 16),
    (MultiturnConfig(num_conversations=2, system_prompt_tokens=48), 48),
    (RagConfig(num_requests=4, system_prompt_tokens=10, chunk_tokens=20, chunks_per_request=2, question_tokens=7), 50),
])
def test_shared_retention_covers_the_shared_part(cfg, shared):
    cfg.shared_retention_priority = 90
    cfg.shared_retention_duration_s = 60.0
    for s in build(cfg):
        assert s.retention_ranges == (TokenRetention(0, shared, 90, 60.0),)
    cfg.shared_retention_priority = cfg.shared_retention_duration_s = None
    assert all(s.retention_ranges == () for s in build(cfg))


@pytest.mark.parametrize("cfg,expect", [
    (MooncakeConfig(shared_retention_priority=90), "the mooncake workload has no shared prompt part"),
    (SystemPromptConfig(shared_retention_priority=101), "shared_retention_priority must be an integer in 0..100"),
    (SystemPromptConfig(shared_retention_duration_s=5.0), "shared_retention_duration_s needs"),
    (SystemPromptConfig(priority_classes=[PriorityClass("a", 0.0)]), "priority_classes[0].share must be"),
    (SystemPromptConfig(priority_classes=[PriorityClass("a"), PriorityClass("a")]), "'a' given twice"),
    (SystemPromptConfig(priority_classes=[PriorityClass("a", retention_priority=-5)]), "retention_priority must be"),
    (SystemPromptConfig(priority_classes=[PriorityClass("a", retention_duration_s=3.0)]), "needs a retention_priority"),
])
def test_bad_priority_config_is_a_config_error(cfg, expect):
    with pytest.raises(ConfigError, match=None) as e:
        build(cfg)
    assert expect in str(e.value)


def test_classes_on_a_trace_with_its_own_priorities_conflict(tmp_path):
    mc = tmp_path / "t.jsonl"
    mc.write_text(_jsonl({**MC_OK, "priority": 2}))
    with pytest.raises(ConfigError, match="conflicts with the priorities"):
        build(MooncakeConfig(path=str(mc), priority_classes=TWO_CLASSES))


def test_a_block_takes_the_range_of_its_first_token():
    """TensorRT-LLM's mapping: blocks starting at tokens 0, 4, 8 are in [0, 10); the one at 12 is
    not, though 8..11 straddles the range's end. Output and other blocks: the request's own
    retention_priority, else the policy's default."""
    pool = pool_of("priority_lru", 5)  # block_size 4

    class Freed:
        spec = RequestSpec("x", np.zeros(1, np.int32), 1, retention_priority=50,
                           retention_ranges=(TokenRetention(0, 10, 90),))

    blocks = [cached_block(pool, k, depth=d) for k, d in ((1, 0), (2, 1), (3, 2), (4, 3))]
    other = cached_block(pool, 9, depth=0)
    pool.policy.before_release(Freed())
    pool.release(list(reversed(blocks)))
    pool.release([other])  # no request: the default, 35
    prio = {b.block_id: pool.policy.priority(b)[0] for b in blocks + [other]}  # the eviction key: (priority,)
    assert [prio[b.block_id] for b in blocks] == [90, 90, 90, 50] and prio[other.block_id] == 35
    assert evict_order(pool, 2) == [other.block_id, blocks[3].block_id]


# -- outputs: requests.csv, metrics.json, report --------------------------------------------------
def test_requests_csv_and_metrics_have_classes_only_when_the_workload_has_them(tmp_path):
    base = ["workload=system_prompt", "workload.num_requests=40", "+policy=lru"]
    plain = simulate(compose_config(base + ["report.enabled=false"]))
    assert "by_priority_class" not in plain.metrics
    assert "priority_class" not in plain.collector.log.fieldnames
    cfg = compose_config(base + [TWO_CLASSES_CLI, "report.enabled=true"])
    out = simulate(cfg)
    write_outputs(out, tmp_path, cfg)
    with open(tmp_path / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["priority_class"] for r in rows} == {"interactive", "batch"}
    assert all(r["priority"] == ("0" if r["priority_class"] == "interactive" else "1") for r in rows)
    m = json.loads((tmp_path / "metrics.json").read_text())
    by = m["by_priority_class"]
    assert list(by) == ["interactive", "batch"]  # highest class (lowest value) first
    assert sum(v["num_requests"] for v in by.values()) == 40
    assert by["interactive"]["ttft_s"]["n"] == sum(r["priority_class"] == "interactive" for r in rows)
    page = (tmp_path / "report.html").read_text()
    assert "By priority class" in page and "interactive (priority 0)" in page


# -- behaviour ------------------------------------------------------------------------------------
def _class_ttft_p99(scheduler: str) -> dict:
    m = simulate(compose_config([
        "workload=multiturn", "workload.num_conversations=96", "workload.turns=2", "workload.request_rate=6",
        TWO_CLASSES_CLI, "num_gpu_blocks=1500", f"scheduler={scheduler}", "+policy=lru", "report.enabled=false",
    ])).metrics
    return {k: v["ttft_s"]["p99"] for k, v in m["by_priority_class"].items()}


def test_priority_scheduling_cuts_the_higher_class_ttft_under_load():
    fcfs, prio = _class_ttft_p99("fcfs"), _class_ttft_p99("priority")
    assert prio["interactive"] < 0.5 * fcfs["interactive"]
    assert prio["batch"] > fcfs["batch"]  # the other side of the trade


def _second_turn_hit(policy: str) -> int:
    """One conversation's two turns with a flood of unrelated prompts between them, in a cache
    that holds the flood or the conversation, not both. Returns the second turn's cached tokens."""
    cfg = MultiturnConfig(num_conversations=1, turns=2, system_prompt_tokens=256, message_tokens=64,
                          output_tokens=16, think_time_s=50.0, shared_retention_priority=90)
    turn1, turn2 = build(cfg)
    rng = np.random.default_rng(7)
    flood = [RequestSpec(f"flood-{i}", rng.integers(0, VOCAB, 512, dtype=np.int32), 4, arrival_time=5.0 + i)
             for i in range(12)]
    specs = [turn1, *flood, turn2]
    sched = build_scheduler(policy, "fcfs", num_blocks=52, bs=16, recompute_cost=unit_recompute, max_num_seqs=1)
    sim = Simulation(specs, sched, COST, verify_every_step=True)
    sim.run()
    return {r.request_id: r for r in sim.requests}["mt-0-1"].num_cached_tokens


def test_retained_system_prompt_outlives_the_user_turns():
    # priority_lru: the 16 system-prompt blocks (retention 90) survive the flood, the first turn's
    # message and answer blocks (default 35) do not; LRU evicts them all, oldest first.
    assert _second_turn_hit("priority_lru") == 256
    assert _second_turn_hit("lru") == 0
