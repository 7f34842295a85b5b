"""Decode steps through the CUDA-graph path (`engine.decode_graphs`).

On the CPU the path runs in mode `padded`: the same static buffers and padded buckets a CUDA graph
replays, without the capture. Its tokens and logits must equal the eager engine's, through prefix
hits, chunked prefill and preemption, with padding rows that write nothing. The capture itself is
checked by the `gpu` tests.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydra")

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # before Triton's first import (see tests/engine/test_kernels.py)
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402

from apcsim.calibration.decode_buckets import batch_buckets, bucket_of  # noqa: E402
from apcsim.errors import ConfigError  # noqa: E402
from engine import kernels  # noqa: E402
from engine.config import compose_engine_config  # noqa: E402
from engine.decode_graphs import DecodeGraphs  # noqa: E402
from engine.runner import run_engine  # noqa: E402
from engine.weights import random_model  # noqa: E402

# 6 requests of 40 prompt tokens (20 shared), 24 output tokens: long enough decode phases.
COMMON = ["model=tiny", "report.enabled=false", "verify=true", "workload=shared_prefix",
          "workload.num_requests=6", "workload.input_tokens=40", "workload.shared_fraction=0.5",
          "workload.output_tokens=24", "block_size=16", "+policy=lru"]


def _run(*overrides: str):
    """(outcome, tokens, logits); outcome.decode_batches lists each pure-decode step's size."""
    decode_batches = []

    def count(plan, result):
        if all(c.num_new_tokens == 1 for c in plan.chunks):
            decode_batches.append(len(plan.chunks) + plan.num_cohort)

    out = run_engine(compose_engine_config([*COMMON, *overrides]), capture_logits=True, on_step=count)
    out.decode_batches = decode_batches
    ex = out.loop.executor
    tokens = {r.request_id: ex.generated(r.request_id).tolist() for r in out.loop.requests}
    assert out.metrics["num_finished"] == 6
    return out, tokens, ex.logits


def _assert_same(a, b) -> None:
    (_, ta, la), (_, tb, lb) = a, b
    assert ta == tb
    assert la.keys() == lb.keys()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-4)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(3) == [1, 2, 4]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 24]
    assert batch_buckets(256)[-3:] == [240, 248, 256] and len(batch_buckets(256)) == 35
    with pytest.raises(ValueError):
        batch_buckets(0)
    # The engine runs every batch as the cost model's bucket_of says.
    graphs_like = batch_buckets(100)
    for b in range(1, 101):
        assert min(x for x in graphs_like if x >= b) == bucket_of(b)


@pytest.mark.parametrize("case", ["buckets", "preemption", "fallback"])
def test_padded_decode_path_matches_eager(case):
    extra = {
        "buckets": ["scheduler.max_num_seqs=6"],  # batches of 6 padded to bucket 8
        "preemption": ["scheduler.max_num_batched_tokens=32", "scheduler.max_num_seqs=4", "num_gpu_blocks=9"],
        "fallback": ["scheduler.max_num_seqs=6", "scheduler.max_num_batched_tokens=64", "cuda_graph_max_batch=4"],  # batches of 6 run eagerly
    }[case]
    eager = _run("device=cpu", "cuda_graphs=off", *extra)
    padded = _run("device=cpu", "cuda_graphs=padded", *extra)
    graphs = padded[0].loop.executor.decode_graphs
    assert eager[0].loop.executor.decode_graphs is None
    assert graphs is not None and graphs.mode == "padded" and graphs.replays > 0
    assert padded[0].metrics["config"]["cuda_graphs"] == "padded"
    batches = padded[0].decode_batches
    if case == "buckets":
        assert set(batches) - set(graphs.buckets) and graphs.replays == len(batches)  # some were padded
    if case == "preemption":
        assert padded[0].metrics["num_preemptions"] > 0 and graphs.replays == len(batches)
    if case == "fallback":
        assert graphs.buckets == [1, 2, 4] and max(batches) > 4
        assert 0 < graphs.replays == sum(b <= 4 for b in batches) < len(batches)
    for key in ("prefix_cache_hits", "num_preemptions", "num_steps", "prompt_tokens_computed"):
        assert padded[0].metrics[key] == eager[0].metrics[key]
    _assert_same(padded, eager)


def test_padding_rows_write_nothing():
    """A batch of 3 in bucket 4: the caches change at the 3 real slots only, and the results equal
    an unpadded eager decode of the same 3 rows."""
    cfg = compose_engine_config(["model=tiny"]).model
    model = random_model(cfg, seed=0, device=torch.device("cpu"), dtype=torch.float32)
    ops = kernels.get_ops("torch")
    bs, nb = 4, 16
    shape = (cfg.num_layers, nb, bs, cfg.num_kv_heads, cfg.head_dim)
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    graphs = DecodeGraphs(model, ops, k, v, max_batch=8, max_blocks_per_seq=4, mode="padded", keep_logits=True)
    seq_lens = np.array([5, 9, 2])  # the new token sits at seq_len - 1
    tables = np.array([[3, 7, 0], [1, 2, 12], [9, 0, 0]])
    pos = seq_lens - 1
    slots = tables[np.arange(3), pos // bs] * bs + pos % bs
    ids = np.array([11, 22, 33])
    before_k, before_v = k.clone(), v.clone()
    assert graphs.load(ids, pos, slots, tables, seq_lens) == 4
    tokens, logits = graphs.run(3)
    assert logits.shape == (3, cfg.vocab_size)
    changed = (k != before_k).flatten(3).any(-1) | (v != before_v).flatten(3).any(-1)  # [L, NB, BS]
    written = {(int(s) // bs, int(s) % bs) for s in slots}
    assert {(int(b), int(o)) for _, b, o in changed.nonzero().tolist()} == written
    # The same step eagerly (fresh caches as before), no padding.
    from engine.model import AttnMetadata

    k2, v2 = before_k.clone(), before_v.clone()
    meta = AttnMetadata(slot_mapping=torch.from_numpy(slots), block_tables=torch.from_numpy(tables).int(),
                        query_start_loc=torch.arange(4, dtype=torch.int32), seq_lens=torch.from_numpy(seq_lens).int(),
                        logits_indices=torch.arange(3), max_query_len=1)
    with torch.inference_mode():
        want = model(torch.from_numpy(ids), torch.from_numpy(pos), meta, k2, v2, ops)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert tokens.tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(k, k2)
    # Without keep_logits (the engine's default) the same tokens, and no logits buffer.
    lean = DecodeGraphs(model, ops, before_k.clone(), before_v.clone(), max_batch=8, max_blocks_per_seq=4, mode="padded")
    lean.load(ids, pos, slots, tables, seq_lens)
    lean_tokens, lean_logits = lean.run(3)
    assert lean_logits is None and lean.logits is None and lean_tokens.tolist() == tokens.tolist()
    # A smaller batch next: the rows the previous step filled become padding again.
    graphs.load(ids[:1], pos[:1], slots[:1], tables[:1], seq_lens[:1])
    assert graphs.slot_mapping[1:4].tolist() == [-1, -1, -1] and graphs.seq_lens[1:4].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="does not fit"):
        graphs.load(ids, pos, slots, np.zeros((3, 5), dtype=np.int64), seq_lens)
    # A profiler may capture only the buckets it times; other batches are left to the eager path.
    only4 = DecodeGraphs(model, ops, k, v, max_batch=8, max_blocks_per_seq=4, mode="padded", capture_only=[4])
    assert [b for b in range(1, 10) if only4.fits(b, 1)] == [3, 4]
    with pytest.raises(ValueError, match="must be buckets"):
        DecodeGraphs(model, ops, k, v, max_batch=8, max_blocks_per_seq=4, mode="padded", capture_only=[3])


def test_padded_decode_path_on_triton_kernels():
    """The padded path on the Triton kernels (interpreter on the CPU): padding rows of seq_len 1
    and slot -1 through write_kv and the split-KV decode kernel, same tokens as eager."""
    pytest.importorskip("triton")
    dev = "cuda" if HAS_CUDA else "cpu"
    small = ["workload.num_requests=3", "workload.output_tokens=4", "attention_backend=triton", f"device={dev}"]
    eager = run_engine(compose_engine_config([*COMMON, *small, "cuda_graphs=off"]))
    padded = run_engine(compose_engine_config([*COMMON, *small, "cuda_graphs=padded"]))
    assert padded.loop.executor.decode_graphs.replays > 0
    for r, s in zip(eager.loop.requests, padded.loop.requests):
        assert eager.loop.executor.generated(r.request_id).tolist() == padded.loop.executor.generated(s.request_id).tolist()


def test_bad_graph_options_are_config_errors():
    with pytest.raises(ConfigError, match="cuda_graphs must be one of"):
        run_engine(compose_engine_config([*COMMON, "device=cpu", "cuda_graphs=maybe"]))
    if not HAS_CUDA:
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            run_engine(compose_engine_config([*COMMON, "device=cpu", "cuda_graphs=on"]))
    with pytest.raises(ConfigError, match="cuda_graph_max_batch"):
        run_engine(compose_engine_config([*COMMON, "device=cpu", "cuda_graphs=padded", "cuda_graph_max_batch=0"]))


@pytest.mark.gpu
def test_cuda_graph_decode_matches_eager_on_gpu():
    """Captured graphs (every bucket up to max_num_seqs) replay the eager engine's tokens, through
    preemption; logits within bf16 tolerance."""
    extra = ["device=cuda", "scheduler.max_num_seqs=6", "scheduler.max_num_batched_tokens=32", "num_gpu_blocks=9"]
    eager = _run(*extra, "cuda_graphs=off")
    graph = _run(*extra, "cuda_graphs=on")
    graphs = graph[0].loop.executor.decode_graphs
    assert graphs.mode == "graph" and graphs.num_graphs == len(batch_buckets(6)) and graphs.replays > 0
    assert graph[0].metrics["num_preemptions"] == eager[0].metrics["num_preemptions"] > 0
    assert graph[1] == eager[1]
    for key in eager[2]:
        torch.testing.assert_close(graph[2][key], eager[2][key], rtol=2e-2, atol=2e-2)
