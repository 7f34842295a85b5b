"""Bring your own model, GPU and profile: Hugging Face config.json models (dense and MoE), tensor
parallelism in the roofline and in KV sizing (physics), profiles named by path and checked
against the run, and hardware/model presets from a user's own config directory (run from outside
the repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apcsim.calibration.cost_model import make_cost_model
from apcsim.calibration.profile import profile_path
from apcsim.cli.compose import compose_config
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig, kv_cache_blocks
from apcsim.hf_config import bundled_hf_configs, read_hf_config
from apcsim.sim.cost_model import RooflineCostModel
from tests.helpers import ROOT

A100 = HardwareConfig(interconnect_bw_gbps=300.0)
LLAMA3_8B = ModelConfig()


def _model(name: str) -> ModelConfig:
    return read_hf_config(f"{name}.json", ModelConfig(name=name))


def _decode(batch: int, ctx: int) -> StepPlan:
    return StepPlan(0, [], num_cohort=batch, cohort_context_sum=batch * ctx)


def _prefill(n: int) -> StepPlan:
    return StepPlan(0, [ScheduledChunk("r", n, 0, (), True)])


# Parameter counts the models' publishers state (billions, total and active per token), which a
# correct reading of their config.json must reproduce within the biases and norms apcsim omits.
# OpenAI counts gpt-oss's active parameters without the embedding table; the others with it.
PUBLISHED = {"llama3_70b": (70.6, None), "qwen3_32b": (32.8, None), "mixtral_8x7b": (46.7, 12.9),
             "qwen3_30b_a3b": (30.5, 3.3), "gpt_oss_20b": (20.9, 3.6)}
ACTIVE_WITHOUT_EMBEDDING = {"gpt_oss_20b"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_bundled_configs_give_the_published_sizes(name):
    assert f"{name}.json" in bundled_hf_configs()
    m = _model(name)
    total, active = PUBLISHED[name]
    assert m.num_params / 1e9 == pytest.approx(total, rel=0.02)
    if active is not None:
        assert m.is_moe
        act = m.num_layers * m.active_params_per_layer + m.lm_head_params
        if name not in ACTIVE_WITHOUT_EMBEDDING:
            act += m.embedding_params
        assert act / 1e9 == pytest.approx(active, rel=0.03)
    # KV size follows the config: K and V per token per layer, kv heads x head dim, bf16.
    assert m.kv_bytes_per_token == 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2


def test_preset_reads_its_config_and_changes_kv_blocks():
    cfg = compose_config(["model=qwen3_30b_a3b", "hardware=h100"])
    from apcsim.run import num_blocks_for, with_model_resolved

    resolved = with_model_resolved(cfg).model
    assert (resolved.num_layers, resolved.num_kv_heads, resolved.num_experts, resolved.experts_per_token,
            resolved.intermediate_size) == (48, 4, 128, 8, 768)
    blocks_8b = num_blocks_for(compose_config(["hardware=h100"]))
    blocks_moe = num_blocks_for(with_model_resolved(cfg))
    # 61 GB of weights instead of 16, but 48 KiB of KV per token instead of 128 KiB.
    assert blocks_moe != blocks_8b and blocks_moe > 0


def test_hf_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}))
    with pytest.raises(ConfigError, match="no num_layers"):
        read_hf_config(str(bad), ModelConfig())
    bad.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10,
                               "intermediate_size": 128, "n_shared_experts": 2, "n_routed_experts": 8}))
    with pytest.raises(ConfigError, match="shared experts"):
        read_hf_config(str(bad), ModelConfig())
    with pytest.raises(ConfigError, match="no such file nope.json .bundled: gpt_oss_20b.json"):
        read_hf_config("nope.json", ModelConfig())


def test_moe_reads_the_experts_its_tokens_touch():
    m = _model("qwen3_30b_a3b")
    assert m.experts_touched(1) == pytest.approx(8)
    assert 8 < m.experts_touched(16) < m.experts_touched(64) < 128
    assert m.experts_touched(100_000) == pytest.approx(128)
    cost = RooflineCostModel(A100, m)
    # Decode at batch 1 reads 8 of 128 experts; at batch 64 nearly all of them: weight-bound time grows.
    t1, t64 = cost.step_time(_decode(1, 1024)), cost.step_time(_decode(64, 1024))
    dense_part = cost.weight_bytes / cost.bw
    assert t64 > 2 * t1 > dense_part
    # A dense model's weight reads do not depend on the batch.
    dense = RooflineCostModel(A100, LLAMA3_8B)
    assert dense._weights_read(1) == dense._weights_read(64)


def test_tp2_is_faster_per_step_but_less_than_twice():
    one, two = RooflineCostModel(A100, LLAMA3_8B, 1), RooflineCostModel(A100, LLAMA3_8B, 2)
    for plan in (_decode(1, 1024), _decode(64, 2048), _prefill(4096)):
        t1, t2 = one.step_time(plan), two.step_time(plan)
        assert t2 < t1 < 2 * t2, plan
    stretch = two.decode_stretch_times(16, 16 * 1000, 5)
    assert list(stretch) == [two.step_time(_decode(16, 1000 + i)) for i in range(5)]


def test_all_reduce_latency_and_bandwidth_cost_time():
    slow_link = HardwareConfig(interconnect_bw_gbps=25.0, interconnect_latency_us=20.0)
    fast, slow = RooflineCostModel(A100, LLAMA3_8B, 2), RooflineCostModel(slow_link, LLAMA3_8B, 2)
    plan = _prefill(2048)
    # 2 all-reduces x 32 layers x 20 us, plus 2048 tokens x 4096 x 2 bytes over 25 GB/s (ring: x 2 (tp-1)/tp = 1).
    extra = 64 * 20e-6 + 64 * 2048 * 4096 * 2 / 25e9 - 64 * 2048 * 4096 * 2 / 300e9
    assert slow.step_time(plan) - fast.step_time(plan) == pytest.approx(extra, rel=1e-9)


def test_kv_blocks_per_replica_grow_with_tp():
    args = (16, 0.9, 8192, 256)
    b1, b2, b4 = (kv_cache_blocks(A100, LLAMA3_8B, *args, tp=tp) for tp in (1, 2, 4))
    assert b1 < b2 < b4
    assert b2 > 2 * b1  # half the KV per GPU and half the weights: more than twice the blocks
    # With fewer KV heads than GPUs the heads are replicated, so blocks stop growing as fast.
    b8 = kv_cache_blocks(A100, ModelConfig(num_kv_heads=4), *args, tp=8)
    b4_4 = kv_cache_blocks(A100, ModelConfig(num_kv_heads=4), *args, tp=4)
    assert b8 < 2 * b4_4


def test_tp_needs_a_link_and_even_heads():
    with pytest.raises(ConfigError, match="interconnect_bw_gbps > 0"):
        RooflineCostModel(HardwareConfig(), LLAMA3_8B, 2)
    with pytest.raises(ConfigError, match="tp=3 does not divide"):
        RooflineCostModel(A100, LLAMA3_8B, 3)


def _copy_profile(tmp_path: Path, meta: dict | None) -> Path:
    dst = tmp_path / "mine.csv"
    shutil.copy(profile_path("a100", "llama3_8b"), dst)
    if meta is not None:
        (tmp_path / "mine.meta.json").write_text(json.dumps(meta))
    return dst


def test_profile_path_is_used_and_checked_against_the_run(tmp_path):
    ok = _copy_profile(tmp_path, {"hardware": "a100", "model": "llama3_8b", "device_name": "NVIDIA A100-SXM4-80GB"})
    cost = make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(ok))
    bundled = make_cost_model("calibrated", A100, LLAMA3_8B)
    assert cost.step_time(_prefill(1024)) == bundled.step_time(_prefill(1024))
    for meta, msg in (({"hardware": "h100", "model": "llama3_8b", "device_name": "NVIDIA H100"},
                       r"measured for hardware=h100 \(NVIDIA H100\), this run has hardware=a100"),
                      ({"hardware": "a100", "model": "tiny"}, "measured for model=tiny, this run has model=llama3_8b"),
                      ({"hardware": "a100", "model": "llama3_8b", "tp": 2}, "measured for tp=2, this run has tp=1")):
        p = _copy_profile(tmp_path, meta)
        with pytest.raises(ConfigError, match=msg):
            make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(p))
    # The CSV itself says tp 1: a tp=2 run refuses it even without metadata.
    (tmp_path / "mine.meta.json").unlink()
    with pytest.raises(ConfigError, match="measured at tp=1, this run has tp=2"):
        make_cost_model("calibrated", A100, LLAMA3_8B, tp=2, profile=str(ok))
    with pytest.raises(ConfigError, match="profile not found"):
        make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(tmp_path / "none.csv"))


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA")}
    return subprocess.run([sys.executable, "-m", "apcsim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_own_presets_and_profile_from_outside_the_repo(tmp_path):
    """What a user does after `pip install`: their GPU and model as a few lines of YAML in their
    own config directory, a model from a config.json, and a profile they measured."""
    conf = tmp_path / "my_conf"
    (conf / "hardware").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "hardware" / "my_gpu.yaml").write_text(
        "name: my_gpu\nmemory_gib: 48.0\npeak_tflops: 362.0\nmem_bw_gbps: 864.0\n"
        "interconnect_bw_gbps: 32.0\ninterconnect_latency_us: 10.0\n")
    shutil.copy(ROOT / "apcsim" / "hf_configs" / "qwen3_30b_a3b.json",
                tmp_path / "config.json")
    (conf / "model" / "my_moe.yaml").write_text("name: my_moe\nhf_config: config.json\n")
    common = ["+policy=lru", "workload.num_requests=20", "report.enabled=false"]
    r = _run(tmp_path, "--config-dir", "my_conf", "hardware=my_gpu", "model=my_moe", "tp=2",
             "cost_model=roofline", *common, "hydra.run.dir=out")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]
    assert (c["hardware"], c["model"], c["tp"], c["cost_model"]) == ("my_gpu", "my_moe", 2, "roofline(my_gpu, my_moe, tp=2)")
    # A profile measured elsewhere, named by path; its metadata must match the run.
    prof = _copy_profile(tmp_path, {"hardware": "a100", "model": "llama3_8b", "tp": 1})
    r = _run(tmp_path, f"profile={prof.name}", *common, "hydra.run.dir=out2")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out2" / "metrics.json").read_text())["config"]["profile"] == prof.name
    r = _run(tmp_path, f"profile={prof.name}", "hardware=h100", *common, "hydra.run.dir=out3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "is for hardware=a100 model=llama3_8b, not hardware=h100 model=llama3_8b" in r.stderr


def test_calibrated_at_tp2_adds_the_all_reduces_to_a_per_gpu_profile(tmp_path):
    """A profile measured at tp 2 (here the bundled one relabelled) costs per-GPU kernels plus the
    interconnect's all-reduces; it is refused at tp 1, and a tp 1 profile at tp 2."""
    src = profile_path("a100", "llama3_8b").read_text().splitlines()
    cols = src[0].split(",")
    i_tp = cols.index("tp")
    rows = [r.split(",") for r in src[1:]]
    for r in rows:
        r[i_tp] = "2"
    p = tmp_path / "llama3_8b_tp2.csv"
    p.write_text("\n".join([src[0], *(",".join(r) for r in rows)]) + "\n")
    cost = make_cost_model("calibrated", A100, LLAMA3_8B, tp=2, profile=str(p))
    assert cost.name == "calibrated(a100, llama3_8b, tp=2)"
    plan = _prefill(2048)
    allreduce = 2 * 32 * 2048 * 4096 * 2 / 300e9  # 2 per layer, ring factor 2 (tp-1)/tp = 1 at tp 2
    assert cost.step_time(plan) - cost.inner.step_time(plan) == pytest.approx(allreduce, rel=1e-9)
    stretch = cost.decode_stretch_times(8, 8 * 500, 4)
    assert list(stretch) == pytest.approx([cost.step_time(_decode(8, 500 + i)) for i in range(4)], rel=1e-12)
    with pytest.raises(ConfigError, match="measured at tp=2, this run has tp=1"):
        make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(p))
