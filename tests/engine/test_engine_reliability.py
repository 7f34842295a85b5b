"""The engine under memory pressure: running out of KV blocks preempts (and resumes with the same
greedy tokens) rather than crashing; a KV cache that cannot fit on the GPU is refused up front
with the numbers (checked here with injected numbers: no GPU on CI)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.config import compose_engine_config, kv_memory_error  # noqa: E402
from engine.runner import run_engine  # noqa: E402

GiB = 2**30
BASE = ["model=tiny", "device=cpu", "report.enabled=false", "verify=true", "block_size=4", "+policy=lru",
        "workload=shared_prefix", "workload.num_requests=6", "workload.input_tokens=20",
        "workload.shared_fraction=0.5", "workload.output_tokens=8"]


def _tokens(out) -> dict:
    ex = out.loop.executor
    return {r.request_id: ex.generated(r.request_id).tolist() for r in out.loop.requests}


def test_out_of_kv_blocks_preempts_and_resumes_with_the_same_tokens():
    # 28 tokens a request = 7 blocks of 4; 9 blocks hold one request and a bit: the rest wait or
    # get preempted, never crash.
    small = run_engine(compose_engine_config([*BASE, "num_gpu_blocks=9"]))
    large = run_engine(compose_engine_config([*BASE, "num_gpu_blocks=256"]))
    m = small.metrics
    assert m["num_finished"] == 6 and m["num_rejected"] == 0
    assert m["num_preemptions"] > 0 and large.metrics["num_preemptions"] == 0
    assert _tokens(small) == _tokens(large), "preemption and recompute must not change greedy outputs"


def test_gpu_oom_message_has_the_numbers():
    common = dict(model="llama3_8b", weights_bytes=int(15 * GiB), activation_bytes=int(1 * GiB),
                  block_bytes=2 * 2**20, total_bytes=int(40 * GiB))
    msg = kv_memory_error(num_blocks=None, free_bytes=int(24 * GiB), utilization=0.4, **common)
    assert msg == ("GPU out of memory for model llama3_8b: weights 15.00 GiB, activations 1.00 GiB, "
                   "24.00 GiB free of 40.00 GiB; gpu_memory_utilization=0.4 leaves 0.00 GiB for the KV cache, "
                   "less than one block (2097152 bytes); raise gpu_memory_utilization or use a smaller model")
    msg = kv_memory_error(num_blocks=20000, free_bytes=int(24 * GiB), utilization=0.9, **common)
    assert msg == ("GPU out of memory for model llama3_8b: weights 15.00 GiB, activations 1.00 GiB, "
                   "24.00 GiB free of 40.00 GiB; num_gpu_blocks=20000 needs 39.06 GiB of KV cache "
                   "(2097152 bytes a block), at most 11776 blocks fit")
    assert kv_memory_error(num_blocks=None, free_bytes=int(24 * GiB), utilization=0.9, **common) is None
    assert kv_memory_error(num_blocks=11776, free_bytes=int(24 * GiB), utilization=0.9, **common) is None
    # The decode graphs' memory is part of the activations and named.
    msg = kv_memory_error(num_blocks=11776, free_bytes=int(24 * GiB), utilization=0.9,
                          **{**common, "activation_bytes": int(1.25 * GiB)}, graph_bytes=int(0.25 * GiB))
    assert msg.startswith("GPU out of memory for model llama3_8b: weights 15.00 GiB, activations 1.25 GiB "
                          "(CUDA graphs 0.25 GiB), 24.00 GiB free") and msg.endswith("at most 11648 blocks fit")


def test_decode_graph_memory_estimate():
    """One forward of the largest bucket (its activations and logits), the static inputs, and the
    shared logits buffer only when kept: not a [b, V] logits tensor per bucket."""
    from apcsim.hardware import activation_bytes
    from engine.decode_graphs import graph_memory_bytes

    model = compose_engine_config(["model=llama3_8b"]).model
    lean = graph_memory_bytes(model, 250, 512, keep_logits=False)  # bucket 256
    inputs = 256 * (4 * 8 + 4 + 4 * 512) + 4 * 257  # int64 ids, positions, slots, rows; int32 lens, table, starts
    assert lean == activation_bytes(model, 256, 256) + inputs
    assert graph_memory_bytes(model, 250, 512, keep_logits=True) - lean == 256 * model.vocab_size * 4
    assert lean < 0.2 * GiB  # a [b, V] fp32 logits tensor kept per bucket up to 256 would be 2 GiB


def test_triton_backend_that_cannot_run_is_refused_before_any_launch(monkeypatch):
    """Without the interpreter on a CPU Triton's own error is "0 active drivers" from inside the
    first kernel launch; the engine names the cause in one line instead."""
    from apcsim.errors import ConfigError
    from engine import kernels
    from engine.config import resolve_ops

    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="set TRITON_INTERPRET=1 in the environment"):
        resolve_ops("triton", cpu)
    assert resolve_ops("torch", cpu).name == "torch"
    assert kernels.triton_unusable_reason("cuda") is None  # compiled kernels: no interpreter involved
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    versions = {"triton": (3, 6), "numpy": (2, 4)}
    monkeypatch.setattr(kernels, "_version", versions.get)
    assert "needs NumPy < 2.4, or Triton >= 3.7" in kernels.triton_unusable_reason("cpu")
    for triton, numpy in (((3, 6), (2, 3)), ((3, 7), (2, 4))):
        versions.update(triton=triton, numpy=numpy)
        assert kernels.triton_unusable_reason("cpu") is None
    versions["triton"] = None
    assert "pip install" in kernels.triton_unusable_reason("cuda")
