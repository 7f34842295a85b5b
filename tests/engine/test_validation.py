"""Profile -> calibrate -> validate on the CPU with the tiny model, and the promise validation rests
on: offline (every request at t=0), the simulator and the engine make the same scheduling
decisions, step by step, including preemptions forced by a small cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydra")

from apcsim.calibration.profile import OPS, read_profile  # noqa: E402
from apcsim.calibration.report import calibrate  # noqa: E402
from apcsim.cli.compose import compose_config  # noqa: E402
from apcsim.errors import ConfigError  # noqa: E402
from apcsim.hardware import ModelConfig  # noqa: E402
from engine.profile import gpu_hardware_name, meta_path, register_profile_config, run_profile  # noqa: E402
from engine.profiling.grid import GRIDS, estimate_seconds  # noqa: E402
from engine.validate import METRICS, compare_metrics, error_pct, register_validate_config, run_validation  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

# One intra-op thread: on a shared 2-core machine two threads make CPU timings jumpy.
TINY = ["model=tiny", "device=cpu", "cpu_threads=1"]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    register_profile_config()
    cfg = compose_config([*TINY, "grid=small", "warmup=1", "repeats=5",
                          f"out={tmp_path_factory.mktemp('profile') / 'tiny.csv'}"], config_name="engine_profile")
    path, meta = run_profile(cfg, argv=["(test)"])
    assert meta["hardware"] == "cpu" and meta["device"] == "cpu" and meta["torch"] == torch.__version__
    return path


def _validate(profile: Path, *overrides: str):
    register_validate_config()
    cfg = compose_config([*TINY, "hardware=cpu", f"profile={profile}", "report.enabled=false", "verify=true",
                          *overrides], config_name="engine_validate")
    return run_validation(cfg)


def test_profile_has_every_op_the_cost_model_fits(tiny_profile):
    prof = read_profile(tiny_profile)
    assert (prof.hardware, prof.model) == ("cpu", "tiny")
    token_ops = {op for op, spec in OPS.items() if spec.kind == "token"}
    assert token_ops | {"attn_prefill", "attn_decode", "cpu_step", "cpu_hash"} == set(prof.ops)
    g = GRIDS["small"]
    assert sorted(set(prof.ops["attn_decode"].batch_size.tolist())) == sorted(g.decode_batch)
    assert len(prof.ops["attn_prefill"].time_ms) == len(g.prefill_points())
    assert len(prof.ops["mlp_up_proj"].time_ms) == len(g.tokens)
    meta = json.loads(meta_path(tiny_profile).read_text())
    assert meta["rows"] == sum(len(d.time_ms) for d in prof.ops.values())
    assert meta["grid"]["tokens"] == list(g.tokens) and meta["date_utc"] and meta["command"]


def test_profile_fits_and_reports_errors(tiny_profile):
    model = compose_config(["model=tiny", "hardware=cpu"]).model
    hw = compose_config(["hardware=cpu"]).hardware
    result = calibrate(hw, model, str(tiny_profile))
    assert result["cost_model"] == "calibrated(cpu, tiny)"
    for op in ("mlp_up_proj", "attn_prefill", "attn_decode", "cpu_step"):
        e = result["ops"][op]
        assert e["n_holdout"] >= 1 and math.isfinite(e["median_ape_pct"])
    assert result["overheads"]["cpu_step_ms"] > 0
    p = result["predictions_ms"]
    assert 0 < p["decode_b1_c1024"] < p["decode_b128_c1024"] and p["prefill_512"] < p["prefill_4096"]
    with pytest.raises(ConfigError, match="is for hardware=cpu model=tiny"):
        calibrate(compose_config(["hardware=h100"]).hardware, model, str(tiny_profile))


# (overrides, whether the small cache must force preemptions)
OFFLINE_CASES = {
    "shared_prefix-lru-preempting": ([
        "+policy=lru", "block_size=16", "workload=shared_prefix", "workload.num_requests=12",
        "workload.input_tokens=64", "workload.output_tokens=16", "num_gpu_blocks=20",
        "scheduler.max_num_batched_tokens=64", "scheduler.max_num_seqs=8"], True),
    # 32 blocks: under vLLM 0.32's full-sequence admission gate 40 no longer force a preemption.
    "multiturn-cost_aware-bs4": ([
        "+policy=cost_aware", "block_size=4", "workload=multiturn", "workload.num_conversations=4",
        "workload.turns=3", "workload.system_prompt_tokens=32", "workload.message_tokens=16",
        "workload.output_tokens=8", "num_gpu_blocks=32", "scheduler.max_num_batched_tokens=48",
        "scheduler.max_num_seqs=8"], True),
    "rag-lfu": ([
        "+policy=lfu", "block_size=16", "workload=rag", "workload.num_requests=12", "workload.num_documents=6",
        "workload.chunk_tokens=32", "workload.chunks_per_request=2", "workload.system_prompt_tokens=32",
        "workload.question_tokens=16", "workload.output_tokens=8", "num_gpu_blocks=64",
        "scheduler.max_num_seqs=4", "scheduler.max_num_batched_tokens=128"], False),
}


@pytest.mark.parametrize("case", list(OFFLINE_CASES))
def test_offline_engine_and_simulator_schedule_identically(tiny_profile, case):
    overrides, preempts = OFFLINE_CASES[case]
    out = _validate(tiny_profile, *overrides, "skip_quiet=false")
    d = out.info["decisions"]
    assert d["plans_identical"] is True and d["plans_compared"] == out.engine.metrics["num_steps"], d
    assert d["requests_differing"] == 0, d
    for name in ("prefix_cache_hit_rate", "prompt_tokens_computed", "num_preemptions"):
        assert out.comparison[name]["error_pct"] == 0.0, (name, out.comparison[name])
    assert (out.engine.metrics["num_preemptions"] > 0) == preempts
    assert out.engine.metrics["prefix_cache_hits"] > 0
    # Skipping quiet decode stretches changes nothing the scheduler decides.
    skipped = _validate(tiny_profile, *overrides, "skip_quiet=true")
    assert skipped.info["decisions"]["requests_differing"] == 0
    assert skipped.sim.metrics["num_steps"] == out.engine.metrics["num_steps"]


@pytest.fixture(scope="module")
def padded_profile(tmp_path_factory) -> Path:
    """Profiled with the decode-graph path (`padded` on the CPU): decode steps are timed whole."""
    register_profile_config()
    cfg = compose_config([*TINY, "grid=small", "warmup=1", "repeats=3", "cuda_graphs=padded",
                          f"out={tmp_path_factory.mktemp('profile') / 'tiny_padded.csv'}"], config_name="engine_profile")
    path, meta = run_profile(cfg, argv=["(test)"])
    assert meta["decode_graphs"] == "padded"
    return path


def test_decode_graph_profile_validates_with_the_same_decisions(tiny_profile, padded_profile):
    prof = read_profile(padded_profile)
    g = GRIDS["small"]
    steps = prof.ops["decode_step"]
    assert sorted(zip(steps.batch_size.tolist(), steps.context_len.tolist())) == sorted(g.decode_step_points())
    model = compose_config(["model=tiny", "hardware=cpu"]).model
    result = calibrate(compose_config(["hardware=cpu"]).hardware, model, str(padded_profile))
    assert "decode_step" in result["ops"] and set(result["decode_step_vs_op_sum"]) == {
        n for n in result["predictions_ms"] if n.startswith("decode_")}
    overrides = [*OFFLINE_CASES["shared_prefix-lru-preempting"][0], "skip_quiet=false"]
    out = _validate(padded_profile, *overrides, "cuda_graphs=padded")
    assert out.info["cuda_graphs"] == "padded" and out.engine.loop.executor.decode_graphs.replays > 0
    assert out.info["decisions"]["plans_identical"] is True and out.info["decisions"]["requests_differing"] == 0
    # The engine must run decode steps the way its profile timed them.
    with pytest.raises(ConfigError, match="times decode steps whole"):
        _validate(padded_profile, *overrides, "cuda_graphs=off")
    with pytest.raises(ConfigError, match="times decode steps per op"):
        _validate(tiny_profile, *overrides, "cuda_graphs=padded")


def test_suite_set_overrides_reach_every_run(padded_profile, tmp_path):
    from engine.validate_suite import main

    out = tmp_path / "suite"
    assert main(["suite=cpu_demo", "only=shared_prefix-lru-16", f"profile={padded_profile}", "set=cuda_graphs=padded",
                 "set=workload.num_requests=8", f"out={out}"]) == 0
    info = json.loads((out / "shared_prefix-lru-16" / "validation_info.json").read_text())
    assert info["cuda_graphs"] == "padded" and info["decisions"]["requests_compared"] == 8
    assert "| shared_prefix-lru-16 |" in (out / "table.md").read_text()
    with pytest.raises(ConfigError, match="set= takes an override"):
        main(["suite=cpu_demo", "set=cuda_graphs"])


def test_error_pct_rules():
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert error_pct(0, 0) == 0.0
    assert error_pct(3, 0) is None and error_pct(None, 1.0) is None
    m = {"prefix_cache_hit_rate": 0.5, "prompt_tokens_computed": 100, "num_preemptions": 0,
         "output_throughput_tok_s": 100.0, "total_token_throughput_tok_s": 200.0,
         "ttft_s": {"p50": 1.0, "p90": 2.0, "p99": 3.0}, "tpot_s": {"p50": 0.1, "p90": 0.2},
         "e2e_s": {"p50": 5.0, "p90": 6.0}}
    s = json.loads(json.dumps(m))
    s["prefix_cache_hit_rate"], s["num_preemptions"], s["output_throughput_tok_s"] = 0.504, 2, 104.0
    c = compare_metrics(s, m)
    assert list(c) == [name for name, _, _ in METRICS]
    assert c["prefix_cache_hit_rate"]["within_goal"] is True  # 0.4 points
    assert c["num_preemptions"]["error_pct"] is None and c["num_preemptions"]["within_goal"] is True  # within 2
    assert c["output_throughput_tok_s"]["within_goal"] is False  # 4 % > 3 %
    assert c["ttft_s.p50"]["error_pct"] == 0.0 and c["ttft_s.p50"]["within_goal"] is True


def test_hardware_names_and_full_grid_budget():
    assert gpu_hardware_name("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_hardware_name("NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu_hardware_name("NVIDIA L40S") == "l40s"
    assert gpu_hardware_name("NVIDIA GeForce RTX 4090") == "geforce_rtx_4090"
    h100 = compose_config(["hardware=h100"]).hardware
    # The issue's budget: one H100 profile of Llama-3-8B within a 10-minute call.
    est = estimate_seconds(GRIDS["full"], ModelConfig(), peak_tflops=h100.peak_tflops, mem_bw_gbps=h100.mem_bw_gbps,
                           warmup=3, repeats=10)
    assert 60 < est < 300
    for g in GRIDS.values():
        g.check()


@pytest.mark.slow
def test_validate_cli_end_to_end(tiny_profile, tmp_path):
    """`python -m engine.validate` writes the comparison, both runs and the page."""
    run_dir = tmp_path / "val"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "engine.validate", "+policy=lru", "block_size=16", *TINY, "hardware=cpu",
           f"profile={tiny_profile}", "workload=shared_prefix", "workload.num_requests=8", "workload.input_tokens=64",
           "workload.output_tokens=8", "report.plotlyjs=cdn", f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    v = json.loads((run_dir / "validation.json").read_text())
    assert list(v) == [name for name, _, _ in METRICS]
    assert v["prefix_cache_hit_rate"]["sim"] == v["prefix_cache_hit_rate"]["engine"] > 0
    for name in ("output_throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p90"):
        assert v[name]["engine"] > 0 and v[name]["sim"] > 0 and v[name]["error_pct"] is not None
    info = json.loads((run_dir / "validation_info.json").read_text())
    assert info["decisions"]["requests_differing"] == 0 and info["profile"] == str(tiny_profile)
    for sub in ("engine", "sim"):
        m = json.loads((run_dir / sub / "metrics.json").read_text())
        assert m["num_finished"] == 8
    assert "validation" in (run_dir / "validation.html").read_text()
    # A profile for other hardware: one line on stderr, exit status 2.
    bad = subprocess.run([*cmd[:-1], "hardware=h100", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is for hardware=cpu" in bad.stderr


def test_h100_suite_lists_the_issue_matrix_and_every_run_composes():
    from engine.validate_suite import load_suite, select

    runs = load_suite("h100")
    workloads = {"shared_prefix_1k", "shared_prefix_4k", "shared_fraction_0.5", "multiturn", "rag", "mooncake", "gmi"}
    assert len(runs) == len(workloads) * 3 * 2 + 1
    for w in workloads:
        for policy in ("lru", "lfu", "cost_aware"):
            for bs in (16, 64):
                assert f"{w}-{policy}-{bs}" in runs
    register_validate_config()
    for name in [f"{w}-cost_aware-64" for w in workloads]:  # one per workload: composing takes ~0.5 s
        cfg = compose_config(runs[name], config_name="engine_validate")
        assert cfg.hardware.name == "h100" and cfg.model.name == "llama3_8b" and cfg.online
    assert compose_config(runs["preempt_small_cache-lru-16"], config_name="engine_validate").num_gpu_blocks == 600
    shards = [select(runs, None, f"{i}/3") for i in range(3)]
    assert sorted(n for s in shards for n in s) == sorted(runs)
    assert list(select(runs, "gmi-*", None)) == [n for n in runs if n.startswith("gmi-")]
    with pytest.raises(ConfigError):
        select(runs, None, "3/3")


def test_online_engine_follows_the_trace_clock_and_validates(tiny_profile):
    """online=true (the H100 matrix's mode): the engine admits no request before its trace time,
    idles between sparse arrivals, and the simulator replays the same timestamps."""
    overrides = ["+policy=lru", "block_size=16", "workload=shared_prefix", "workload.num_requests=8",
                 "workload.input_tokens=64", "workload.output_tokens=4", "workload.request_rate=8",
                 "online=true", "skip_quiet=false"]
    out = _validate(tiny_profile, *overrides)
    eng = out.engine.loop.requests
    sim = out.sim.simulation.requests
    arrivals = [r.spec.arrival_time for r in eng]
    assert arrivals == [r.spec.arrival_time for r in sim] and max(arrivals) > 0.3  # Poisson, not all at 0
    for r in eng:
        assert r.arrival_time == pytest.approx(r.spec.arrival_time, abs=1e-9)
        assert r.first_scheduled_time >= r.spec.arrival_time - 1e-6  # never admitted early
    m = out.engine.metrics
    assert m["num_finished"] == 8 and m["duration_s"] >= max(arrivals)
    # The tiny model serves a request in milliseconds: with ~1/8 s between arrivals the engine idles,
    # so it is busy a small part of the run, as the simulator says too.
    assert m["busy_fraction"] < 0.5 and out.sim.metrics["busy_fraction"] < 0.5
    assert set(out.comparison) >= {"ttft_s.p50", "tpot_s.p50", "output_throughput_tok_s", "prefix_cache_hit_rate"}


# Earlier turns evicted from a small GPU cache and reloaded from the host tier (see
# tests/core/test_host_tier.py for the same case in the simulator).
TIER_CASE = ["+policy=lru", "block_size=4", "workload=multiturn", "workload.num_conversations=4", "workload.turns=3",
             "workload.system_prompt_tokens=32", "workload.message_tokens=16", "workload.output_tokens=8",
             "num_gpu_blocks=32", "scheduler.max_num_batched_tokens=48", "scheduler.max_num_seqs=8"]
TIER_DECISIONS = ("blocks_offloaded", "blocks_loaded", "loads", "loads_abandoned", "reloads_skipped",
                  "external_prefix_cache_queries", "external_prefix_cache_hits", "host_evictions", "used_blocks")


@pytest.mark.parametrize("tier", [["cpu_tier.num_blocks=128"],
                                  ["cpu_tier.num_blocks=48", "cpu_tier.write=through", "cpu_tier.policy=lfu"]])
def test_offline_engine_and_simulator_make_the_same_host_tier_decisions(tiny_profile, tier):
    out = _validate(tiny_profile, *TIER_CASE, *tier, "skip_quiet=false")
    d = out.info["decisions"]
    assert d["plans_identical"] is True and d["requests_differing"] == 0, d
    eng, sim = out.engine.metrics["host_tier"], out.sim.metrics["host_tier"]
    assert {k: eng[k] for k in TIER_DECISIONS} == {k: sim[k] for k in TIER_DECISIONS}
    assert eng["loads"] > 0 and eng["blocks_offloaded"] > 0
    ex = out.engine.loop.executor
    assert ex.host_kv.blocks_copied == {"store": eng["blocks_offloaded"], "load": eng["blocks_loaded"]}
    # The copies are real: every request samples what it samples when its GPU cache never evicts.
    from engine.runner import run_engine

    roomy = run_engine(compose_config([*TINY, "hardware=cpu", "report.enabled=false", *TIER_CASE,
                                       "num_gpu_blocks=512"], config_name="engine"))
    assert roomy.metrics["num_preemptions"] == 0
    for r in out.engine.loop.requests:
        assert (ex.generated(r.request_id) == roomy.loop.executor.generated(r.request_id)).all(), r.request_id
