"""The real engine on the CPU: model vs a dense reference, prefix caching on == off (greedy tokens
and logits), block sizes 1/16, chunked prefill, preemption and resume, pool invariants after every
step, safetensors loading, and the `python -m engine` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydra")

import numpy as np  # noqa: E402

from engine.config import compose_engine_config  # noqa: E402
from engine.model import LLAMA31_ROPE, RopeConfig, rope_inv_freq  # noqa: E402
from engine.runner import run_engine  # noqa: E402
from engine.weights import load_model, random_model, save_model  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

# 6 requests of 40 prompt tokens, the first 20 shared, 8 output tokens each.
SHARED = ["model=tiny", "device=cpu", "report.enabled=false", "verify=true",
          "workload=shared_prefix", "workload.num_requests=6", "workload.input_tokens=40",
          "workload.shared_fraction=0.5", "workload.output_tokens=8"]


def _run(*overrides: str, capture_logits: bool = True):
    if not any(o.startswith("num_gpu_blocks=") for o in overrides):
        overrides = (*overrides, "num_gpu_blocks=512")  # small: verify() walks every block each step
    cfg = compose_engine_config([*SHARED, *overrides])
    steps = []

    def check(plan, result):  # verify=true already checks after every step; count them here
        steps.append(plan.step)

    out = run_engine(cfg, capture_logits=capture_logits, on_step=check)
    ex = out.loop.executor
    tokens = {r.request_id: ex.generated(r.request_id).tolist() for r in out.loop.requests}
    assert out.metrics["num_finished"] == 6
    assert all(min(t) >= 0 for t in tokens.values())
    assert len(steps) == out.metrics["num_steps"]
    return out, tokens, ex.logits


def _assert_logits_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def baseline():
    """Caching off, a big cache, whole prompts in one step: the reference tokens and logits."""
    out, tokens, logits = _run("block_size=16", "scheduler.max_num_batched_tokens=2048")
    assert out.metrics["num_preemptions"] == 0 and out.metrics["prefix_cache_hits"] == 0
    return out, tokens, logits


def test_engine_matches_dense_reference(baseline):
    """Every generated token and its logits equal a dense (non-paged) forward of prompt + output."""
    out, tokens, logits = baseline
    model = out.loop.executor.model
    for r in out.loop.requests:
        gen = tokens[r.request_id]
        seq = np.concatenate([r.spec.prompt_token_ids, np.asarray(gen[:-1], dtype=np.int32)])
        ref = model.dense_forward(torch.from_numpy(seq.astype(np.int64)))  # [S, V]
        ref = ref[r.prompt_len - 1:]  # the positions that sampled output 0..n-1
        assert ref.argmax(-1).tolist() == gen
        for i in range(len(gen)):
            torch.testing.assert_close(logits[(r.request_id, i)], ref[i], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block_size", [1, 16])
def test_prefix_caching_same_tokens_chunked(baseline, block_size):
    """Caching on == off, with prompts chunked by a small token budget."""
    _, ref_tokens, ref_logits = baseline
    common = [f"block_size={block_size}", "scheduler.max_num_batched_tokens=16", "scheduler.max_num_seqs=4"]
    off, off_tokens, off_logits = _run(*common)
    on, on_tokens, on_logits = _run(*common, "+policy=lru")
    assert on.metrics["prefix_cache_hits"] > 0
    assert on.metrics["prompt_tokens_computed"] < off.metrics["prompt_tokens_computed"]
    assert on_tokens == off_tokens == ref_tokens
    _assert_logits_close(on_logits, off_logits)
    _assert_logits_close(on_logits, ref_logits)


@pytest.mark.parametrize("block_size", [1, 16])
def test_preemption_and_resume_same_tokens(block_size):
    """A cache too small for the batch forces preemption by recompute; tokens do not change.

    24 output tokens make each request 64 tokens long (64 or 4 blocks); two prompts fit the small
    cache, and they run out of blocks while decoding."""
    longer = ["workload.output_tokens=24", f"block_size={block_size}"]
    _, ref_tokens, ref_logits = _run(*longer, "scheduler.max_num_batched_tokens=2048")
    blocks = 100 if block_size == 1 else 7
    common = [*longer, f"num_gpu_blocks={blocks}", "scheduler.max_num_batched_tokens=32", "scheduler.max_num_seqs=4"]
    for policy in ([], ["+policy=lru"]):
        out, tokens, logits = _run(*common, *policy)
        assert out.metrics["num_preemptions"] > 0
        assert tokens == ref_tokens
        _assert_logits_close(logits, ref_logits)


def test_safetensors_round_trip(tmp_path):
    cfg = compose_engine_config(["model=tiny"]).model
    model = random_model(cfg, seed=3)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(cfg, tmp_path / "ckpt")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = torch.arange(10)
    torch.testing.assert_close(model.dense_forward(ids), loaded.dense_forward(ids))
    # A different seed gives different weights; the same seed the same ones.
    assert not torch.equal(random_model(cfg, seed=4).lm_head.weight, model.lm_head.weight)
    assert torch.equal(random_model(cfg, seed=3).lm_head.weight, model.lm_head.weight)


def test_safetensors_shape_mismatch_is_one_clear_error(tmp_path):
    from apcsim.errors import ConfigError

    cfg = compose_engine_config(["model=tiny"]).model
    save_model(random_model(cfg), tmp_path / "ckpt")
    wrong = compose_engine_config(["model=tiny", "model.intermediate_size=64"]).model
    with pytest.raises(ConfigError, match="shape"):
        load_model(wrong, tmp_path / "ckpt")


def test_engine_runs_loaded_weights(tmp_path):
    cfg = compose_engine_config(["model=tiny"]).model
    save_model(random_model(cfg, seed=0), tmp_path / "ckpt")
    _, tokens_random, _ = _run("block_size=16", "scheduler.max_num_batched_tokens=2048", capture_logits=False)
    _, tokens_loaded, _ = _run("block_size=16", "scheduler.max_num_batched_tokens=2048",
                               f"weights={tmp_path / 'ckpt'}", capture_logits=False)
    assert tokens_loaded == tokens_random


def test_llama31_rope_scaling():
    plain = rope_inv_freq(128, RopeConfig(theta=500000.0))
    scaled = rope_inv_freq(128, LLAMA31_ROPE)
    wavelen = 2 * np.pi / plain.double()
    high = wavelen < 8192 / 4  # high frequencies are kept
    low = wavelen > 8192 / 1  # low frequencies are divided by the factor
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 8)
    mid = ~high & ~low
    assert mid.any() and bool(((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8)).all())


def test_cli_writes_outputs(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine", "+policy=lru", "block_size=16", "model=tiny", "workload=system_prompt",
           "workload.system_prompt_tokens=64", "workload.question_tokens=8", "workload.output_tokens=4",
           "device=cpu", "report.plotlyjs=cdn", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["num_finished"] == 3 and m["prefix_cache_hits"] == 2 * 64
    assert m["config"]["executor"] == "engine" and m["config"]["device"] == "cpu"
    rows = (run_dir / "requests.csv").read_text().splitlines()
    assert len(rows) == 4
    outs = [json.loads(line) for line in (run_dir / "outputs.jsonl").read_text().splitlines()]
    assert [o["request_id"] for o in outs] == ["sp-0", "sp-1", "sp-2"]
    assert all(len(o["output_token_ids"]) == 4 for o in outs)
    assert (run_dir / "report.html").exists()
    assert json.loads((run_dir / "status.json").read_text()) == {"status": "ok", "error": None}
    assert not list(run_dir.glob("*.partial")) and not list(run_dir.glob(".*.tmp-*"))


def test_cli_bad_option_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "engine", "model=tiny", "device=cpu", "attention_backend=nope",
                        f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("engine: error:") and "attention_backend" in p.stderr


def test_triton_backend_in_the_interpreter_gives_the_reference_tokens(tmp_path):
    """The whole engine on the Triton kernels (TRITON_INTERPRET=1 on the CPU, in a subprocess so the
    flag precedes Triton's import): caching on, chunked prefill, same tokens as the torch backend."""
    pytest.importorskip("triton")
    common = ["model=tiny", "device=cpu", "report.enabled=false", "verify=true", "+policy=lru", "block_size=16",
              "workload=shared_prefix", "workload.num_requests=4", "workload.input_tokens=40",
              "workload.shared_fraction=0.5", "workload.output_tokens=6", "scheduler.max_num_batched_tokens=24",
              "scheduler.max_num_seqs=4"]
    run_dir = tmp_path / "triton"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-m", "engine", *common, "attention_backend=triton", f"hydra.run.dir={run_dir}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["config"]["attention_backend"] == "triton" and m["prefix_cache_hits"] > 0
    got = {o["request_id"]: o["output_token_ids"] for o in map(json.loads, (run_dir / "outputs.jsonl").read_text().splitlines())}
    out = run_engine(compose_engine_config([*common, "attention_backend=torch"]))
    ex = out.loop.executor
    want = {r.request_id: ex.generated(r.request_id).tolist() for r in out.loop.requests}
    assert got == want
