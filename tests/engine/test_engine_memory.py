"""The engine's memory handling on the GPU, checked on the CPU where it can be: random weights are
allocated once in their final dtype, the allocator's cache is emptied before the free memory sizes
the KV cache, a validation suite frees each engine before the next, and the profiler reports each
point as it is measured."""

from __future__ import annotations

import gc
import io
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydra")

from apcsim.cli.compose import compose_config  # noqa: E402
from engine.config import compose_engine_config, kv_num_blocks  # noqa: E402
from engine.model import LlamaForCausalLM  # noqa: E402
from engine.weights import random_model  # noqa: E402


def test_random_weights_are_allocated_in_their_dtype(monkeypatch):
    seen = []
    real = LlamaForCausalLM.to_empty

    def spy(self, *, device, **kw):
        seen.extend(p.dtype for p in self.parameters())
        return real(self, device=device, **kw)

    monkeypatch.setattr(LlamaForCausalLM, "to_empty", spy)
    cfg = compose_config(["model=tiny"]).model
    model = random_model(cfg, seed=0, device="cpu", dtype=torch.bfloat16)
    assert seen and set(seen) == {torch.bfloat16}  # nothing materialised in fp32 first
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.inv_freq.dtype == torch.float32  # the rotary buffer stays fp32
    # The same seed gives the same weights:
    again = random_model(cfg, seed=0, device="cpu", dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_kv_cache_sizing_empties_the_allocator_cache_first(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))

    def mem_get_info(device=None):
        calls.append("mem_get_info")
        return 60 * 2**30, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    cfg = compose_engine_config(["model=tiny", "gpu_memory_utilization=0.9"])
    n = kv_num_blocks(cfg, torch.device("cuda"), torch.bfloat16, weights_bytes=0)
    assert calls == ["empty_cache", "mem_get_info"]
    assert n > 0


def test_suite_frees_each_engine_before_the_next(tmp_path, monkeypatch):
    """With the automatic collector off, only the suite's own collection can free the engine's
    model (it sits in reference cycles)."""
    import engine.validate as validate
    from engine import validate_suite

    models = []
    real = validate.run_validation

    def spy(cfg):
        out = real(cfg)
        models.append(weakref.ref(out.engine.loop.executor.model))
        return out

    monkeypatch.setattr(validate, "run_validation", spy)
    overrides = ["model=tiny", "hardware=cpu", "device=cpu", "cpu_threads=1", "report.enabled=false",
                 "cost_model=calibrated", "+policy=lru", "workload=shared_prefix", "workload.num_requests=3",
                 "workload.input_tokens=32", "workload.output_tokens=2", "profile=" + str(_small_profile(tmp_path))]
    gc.disable()
    try:
        validate_suite.run_one("a", overrides, tmp_path / "a")
        assert models and models[0]() is None
    finally:
        gc.enable()


def _small_profile(tmp_path):
    from engine.profile import register_profile_config, run_profile

    register_profile_config()
    cfg = compose_config(["model=tiny", "device=cpu", "cpu_threads=1", "grid=small", "warmup=0", "repeats=1",
                          f"out={tmp_path / 'tiny.csv'}"], config_name="engine_profile")
    path, _ = run_profile(cfg, argv=["(test)"])
    return path


def test_profiler_streams_a_line_per_point(tmp_path, capfd):
    _small_profile(tmp_path)
    err = capfd.readouterr().err.splitlines()
    points = [ln for ln in err if ": point " in ln]
    assert len(points) > 10 and all(ln.startswith("engine.profile: [") for ln in points)
    for phase in ("token_ops", "lm_head", "attention", "cpu_step", "cpu_hash"):
        assert any(f"{phase}: started" in ln for ln in err) and any(f"{phase}: done" in ln for ln in err)


def test_progress_log_flushes_each_line():
    from engine.profile import ProgressLog

    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            Stream.flushes += 1

    s = Stream()
    log = ProgressLog(0.0, stream=s)
    log.start("attention")
    log.point(1.5)
    log.end(1)
    assert s.getvalue().count("\n") == 3 and Stream.flushes >= 3
