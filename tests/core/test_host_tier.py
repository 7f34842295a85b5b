"""The host KV tier (apcsim.core.host_tier): a hand-computed scenario of offloads, a reload and
its time; write-through; the reload policy; the tier off changes nothing; config errors."""

from __future__ import annotations

import numpy as np
import pytest

from apcsim.cli.compose import compose_config
from apcsim.core.build import make_scheduler
from apcsim.core.host_tier import HostLink, HostTierConfig, TierParts
from apcsim.core.request import RequestSpec
from apcsim.errors import ConfigError
from apcsim.run import simulate
from apcsim.sim.simulator import Simulation
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from tests.helpers.serving import COST, roofline_recompute

BS = 4
LINK = HostLink(bw_gbps=1.0, latency_us=10.0, block_bytes=1000)  # a block: 1 us, a transfer: +10 us


def tokens(seed: int, n: int = 13) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 20, n, dtype=np.int32)


def abc_specs() -> list[RequestSpec]:
    """A and B: 13-token prompts of their own (3 full blocks + 1 token), one output token each;
    C: A's prompt again. All at t=0, so FCFS admits them in that order."""
    a, b = tokens(1), tokens(2)
    return [RequestSpec("A", a, 1), RequestSpec("B", b, 1), RequestSpec("C", a.copy(), 1)]


def tier_scheduler(specs, *, write="back", reload="always", link=LINK, host_blocks=8, gpu_blocks=5):
    """4 usable GPU blocks (vLLM's null block takes one of 5): one 14-token request at a time."""
    sc = SCHEDULING_POLICIES["fcfs"].config_cls(max_num_batched_tokens=64, max_num_seqs=4)
    parts = TierParts(HostTierConfig(num_blocks=host_blocks, write=write, reload=reload), host_blocks, link,
                      COST.recompute_time)
    return make_scheduler(EVICTION_POLICIES["lru"].config_cls(), sc, num_blocks=gpu_blocks, block_size=BS,
                          recompute_cost=roofline_recompute(BS), specs=specs, host_tier=parts)


def run(specs, sched):
    plans = []
    sim = Simulation(specs, sched, COST, verify_every_step=True, on_step=lambda p, r: plans.append(p))
    m = sim.run().summary(sim.requests)
    return sim, plans, m


def test_write_back_offloads_on_eviction_and_reloads_a_host_hit():
    specs = abc_specs()
    sched = tier_scheduler(specs)
    sim, plans, m = run(specs, sched)
    tier = sched.host_tier
    # step 0: A computes 13 tokens and finishes; step 1: B takes A's keyless tail block and evicts
    # A's 3 keyed blocks (3 stores, one transfer); step 2: C finds nothing on the GPU and A's 3
    # blocks on the host: it is admitted loading and takes 3 GPU blocks: B's keyless tail block
    # and 2 of B's keyed ones, evicted (2 stores); step 3: C takes one more block for its last
    # prompt token, evicting B's last keyed block (1 store), and finishes.
    assert [p.step for p in plans] == [0, 1, 2, 3]
    assert [[c.request_id for c in p.chunks] for p in plans] == [["A"], ["B"], [], ["C"]]
    assert plans[0].transfers is None
    t1, t2, t3 = plans[1].transfers, plans[2].transfers, plans[3].transfers
    assert [c.kind for c in t1.copies] == ["store"] * 3
    assert [c.kind for c in t2.copies] == ["store"] * 2 + ["load"] * 3
    assert [c.kind for c in t3.copies] == ["store"]
    assert t2.load_s == pytest.approx(10e-6 + 3e-6) and t2.store_s == pytest.approx(10e-6 + 2e-6)
    assert t3.load_s == 0.0 and t3.store_s == pytest.approx(11e-6)
    # The loads read the host blocks A's blocks were stored to (tail first), in chain order.
    assert [c.src for c in t2.copies[2:]] == [c.dst for c in reversed(t1.copies)]
    s = tier.stats
    assert (s.blocks_offloaded, s.blocks_loaded, s.loads, s.reloads_skipped) == (6, 3, 1, 0)
    assert s.external_prefix_cache_queries == 3 * 13 and s.external_prefix_cache_hits == 12
    assert m["prefix_cache_hits"] == 0 and m["prompt_tokens_computed"] == 13 + 13 + 1
    assert tier.used_blocks == 6
    # The loading step has no compute: it lasts as long as its copies (the simulator's model).
    c = next(r for r in sim.requests if r.request_id == "C")
    assert c.num_cached_tokens == 12
    summary = tier.summary(m["prefix_cache_queries"], m["prefix_cache_hits"])
    assert summary["kv_offload_bytes_gpu_to_cpu"] == 6000 and summary["kv_offload_bytes_cpu_to_gpu"] == 3000
    assert summary["combined_prefix_cache_hit_rate"] == pytest.approx(12 / 39)


def test_loading_step_lasts_its_copies():
    specs = abc_specs()
    sched = tier_scheduler(specs)
    ends = []
    sim = Simulation(specs, sched, COST, on_step=lambda p, r: ends.append(sim.executor.now()))
    sim.run()
    assert ends[2] - ends[1] == pytest.approx(13e-6)  # max(no compute, 13 us of load, 13 us of store)
    assert sim.executor.transfer_stall_s >= 13e-6


def test_write_through_copies_when_cached_not_when_evicted():
    specs = abc_specs()
    sched = tier_scheduler(specs, write="through")
    _, plans, m = run(specs, sched)
    # A's 3 blocks are keyed in step 0 and copied at the start of step 1; B's in step 2 with C's
    # load; C's loaded blocks are keyed in step 3 (already on the host: no copy); evictions copy
    # nothing.
    assert [c.kind for c in plans[1].transfers.copies] == ["store"] * 3
    assert [c.kind for c in plans[2].transfers.copies] == ["store"] * 3 + ["load"] * 3
    assert sched.host_tier.stats.blocks_offloaded == 6 and sched.host_tier.stats.blocks_loaded == 3
    assert m["prompt_tokens_computed"] == 27


def test_reload_if_faster_recomputes_over_a_slow_link():
    specs = abc_specs()
    slow = HostLink(bw_gbps=1e-6, latency_us=0.0, block_bytes=1000)  # a block: 1 s
    sched = tier_scheduler(specs, reload="if_faster", link=slow)
    _, plans, m = run(specs, sched)
    s = sched.host_tier.stats
    assert (s.loads, s.blocks_loaded, s.reloads_skipped) == (0, 0, 1)
    assert m["prompt_tokens_computed"] == 3 * 13
    fast = tier_scheduler(abc_specs(), reload="if_faster")
    run(abc_specs(), fast)
    assert fast.host_tier.stats.loads == 1 and fast.host_tier.stats.reloads_skipped == 0


def test_host_tier_evicts_by_its_own_policy():
    specs = abc_specs()
    sched = tier_scheduler(specs, host_blocks=3)  # room for one 3-block chain
    _, _, m = run(specs, sched)
    # B's 2 blocks evicted for C's load in step 2 would overwrite A's; the load holds them, so
    # those copies are dropped. In step 3 B's last block takes the host's LRU block (one of A's).
    s = sched.host_tier.stats
    assert s.loads == 1 and s.blocks_loaded == 3 and s.blocks_offloaded == 3 + 1 and s.host_evictions == 1


def test_tier_off_is_the_default_and_changes_nothing():
    cfg = compose_config(["+policy=lru", "workload=shared_prefix", "workload.num_requests=20"])
    assert not cfg.cpu_tier.enabled
    off = simulate(cfg).metrics
    assert "host_tier" not in off
    big = simulate(compose_config(["+policy=lru", "workload=shared_prefix", "workload.num_requests=20",
                                   "cpu_tier.num_blocks=64"])).metrics
    assert big["host_tier"]["blocks_loaded"] == 0  # nothing evicted from a large GPU: no reload
    for key in ("prefix_cache_hits", "prompt_tokens_computed", "num_steps"):
        assert big[key] == off[key]


def test_mooncake_slice_with_a_tier_and_its_bound():
    cfg = compose_config(["+policy=lru", "workload=mooncake", "workload.num_requests=100", "num_gpu_blocks=1500",
                          "cpu_tier.num_blocks=6000", "cpu_tier.bound=true", "report.enabled=false"])
    m = simulate(cfg).metrics
    ht = m["host_tier"]
    assert ht["loads"] > 0 and ht["blocks_loaded"] > 0 and ht["external_prefix_cache_hits"] > 0
    assert ht["combined_prefix_cache_hit_rate"] > m["prefix_cache_hit_rate"]
    b = ht["bound"]
    assert b["gpu_plus_host"]["capacity_blocks"] == b["gpu"]["capacity_blocks"] + 6000
    assert b["gpu_plus_host"]["belady_hit_rate"] >= b["gpu"]["belady_hit_rate"]
    assert b["gpu_plus_host"]["belady_hit_rate"] >= b["gpu_plus_host"]["lru_hit_rate"]


@pytest.mark.parametrize("overrides,match", [
    (["cpu_tier.num_blocks=8"], "needs prefix caching"),
    (["+policy=lru", "cpu_tier.num_blocks=8", "cpu_tier.write=around"], "cpu_tier.write must be one of"),
    (["+policy=lru", "cpu_tier.num_blocks=8", "cpu_tier.reload=never"], "cpu_tier.reload must be one of"),
    (["+policy=lru", "cpu_tier.num_blocks=8", "cpu_tier.policy=none"], "cpu_tier.policy must be one of"),
    (["+policy=lru", "cpu_tier.num_blocks=8", "hardware.host_link_bw_gbps=0"], "host_link_bw_gbps > 0"),
    (["+policy=lru", "cpu_tier.gib=0.000001"], "holds no block"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        simulate(compose_config(["workload=shared_prefix", "workload.num_requests=2", *overrides]))


def test_gib_sizes_the_tier_in_blocks():
    cfg = compose_config(["+policy=lru", "workload=shared_prefix", "workload.num_requests=4", "cpu_tier.gib=1",
                          "block_size=16"])
    m = simulate(cfg).metrics
    # llama3_8b: 128 KiB of K and V a token, 2 MiB a 16-token block: 512 blocks a GiB.
    assert m["host_tier"]["num_blocks"] == 512


MULTITURN = ["model=tiny", "hardware=cpu", "cost_model=roofline", "report.enabled=false", "verify=true",
             "+policy=lru", "block_size=4", "workload=multiturn", "workload.num_conversations=4", "workload.turns=3",
             "workload.system_prompt_tokens=32", "workload.message_tokens=16", "workload.output_tokens=8",
             "num_gpu_blocks=32", "scheduler.max_num_batched_tokens=48", "scheduler.max_num_seqs=8",
             "cpu_tier.num_blocks=128"]


def test_multiturn_reloads_earlier_turns():
    m = simulate(compose_config(MULTITURN), use_timestamps=False).metrics
    h = m["host_tier"]
    assert h["loads"] > 0 and h["external_prefix_cache_hits"] > 0 and h["loads_abandoned"] == 0
    assert m["num_finished"] == m["num_requests"]


def test_loaded_requests_that_block_each_other_give_blocks_back():
    # Without vLLM 0.32's full-sequence admission gate two loaded requests can each hold blocks
    # the other needs with nothing running: the newest gives its blocks back and the run ends.
    m = simulate(compose_config([*MULTITURN, "scheduler.reserve_full_sequence=false"]), use_timestamps=False).metrics
    assert m["host_tier"]["loads_abandoned"] >= 1 and m["num_finished"] == m["num_requests"]


def test_host_tier_takes_any_registered_policy_belady_included():
    base = ["+policy=lru", "workload=multiturn", "workload.num_conversations=16", "num_gpu_blocks=256",
            "cpu_tier.num_blocks=512", "report.enabled=false"]
    lru = simulate(compose_config(base)).metrics["host_tier"]
    belady = simulate(compose_config([*base, "cpu_tier.policy=belady", "verify=true"])).metrics["host_tier"]
    assert belady["policy"] == "belady" and belady["loads"] > 0
    # The offline policy keeps what is used next: it hits at least as often as LRU here.
    assert belady["combined_prefix_cache_hit_rate"] >= lru["combined_prefix_cache_hit_rate"]


@pytest.mark.parametrize("write", ["back", "through"])
@pytest.mark.parametrize("outputs", [[], ["workload.output_tokens=40", "verify=true"]], ids=["short", "decode_evicts"])
def test_skipping_quiet_steps_changes_nothing_with_a_tier(write, outputs):
    """`decode_evicts`: decodes cross block boundaries in quiet stretches and evict cached
    blocks there; a write-back store must stay with the step whose eviction made it."""
    base = [*MULTITURN, "verify=false", f"cpu_tier.write={write}", "cpu_tier.num_blocks=48", *outputs]
    stepped = simulate(compose_config([*base, "skip_quiet=false"])).metrics
    skipped = simulate(compose_config([*base, "skip_quiet=true"])).metrics
    assert stepped["host_tier"]["blocks_offloaded"] > 0
    for key in ("host_tier", "ttft_s", "prompt_tokens_computed", "duration_s", "num_steps"):
        assert skipped[key] == stepped[key], key


def test_report_and_summary_line_split_hits_by_tier():
    from apcsim.outputs.metrics import summary_line
    from apcsim.outputs.report import _tier_table

    m = simulate(compose_config(["+policy=lru", "workload=shared_prefix", "workload.num_requests=30",
                                 "num_gpu_blocks=300", "cpu_tier.num_blocks=1200"])).metrics
    t = m["host_tier"]
    table = _tier_table(m)
    assert "<h2>KV tiers</h2>" in table and f"<td>{t['num_blocks']}</td>" in table and "<td>GPU</td>" in table
    assert f"{t['used_blocks']} ({t['peak_used_blocks']})" in table
    assert f"both {t['combined_prefix_cache_hit_rate']:.3f}, {t['loads']} loads" in summary_line(m, clock="simulated")
    off = simulate(compose_config(["+policy=lru", "workload=shared_prefix", "workload.num_requests=4"])).metrics
    assert _tier_table(off) == "" and "host tier" not in summary_line(off, clock="simulated")
