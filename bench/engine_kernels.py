"""Attention-kernel benchmark of the real engine (GPU; ``--smoke`` checks it on the CPU).

Cases (Llama-3-8B attention heads: 32 query heads, 8 KV heads, head 128; bf16; block 16):
  decode   batch 64, context 4,096: the split-KV Triton decode kernel over a paged cache with a
           random (non-contiguous) block table. Reports achieved bandwidth = KV bytes read /
           time, against (a) a measured device-to-device copy bandwidth (torch copy_ of a 1 GiB
           tensor, counted as read + write bytes) and (b) torch SDPA on the same K/V laid out
           contiguously ([B, Hkv, ctx, D], enable_gqa). Goals (issue 4): >= 90 % of copy
           bandwidth and >= 0.95x SDPA's bandwidth.
  prefill  1,024 new tokens after 3,072 cached tokens (one sequence): the Triton varlen kernel
           reading the prefix through the block table, against torch SDPA's flash path on
           contiguous tensors. Flash's is_causal is top-left aligned when q_len != kv_len, so the
           contiguous baseline is flash with no mask over all 4,096 keys (slightly more work);
           a lower-right-causal SDPA (torch.nn.attention.bias.causal_lower_right) is timed too.
           Throughput = useful causal FLOPs / time for all; goal: Triton >= 0.8x flash.

Timing: torch.cuda.Event around each call, warmup then median over iterations. Prints one JSON
object (and writes it to --out if given).

Usage (GPU):  python bench/engine_kernels.py [--sweep] [--out bench/results/engine_kernels_h100.json]
Usage (CPU):  python bench/engine_kernels.py --smoke   # tiny shapes, TRITON_INTERPRET=1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

SMOKE = "--smoke" in sys.argv
if SMOKE:
    # Must precede the first import of triton (engine.kernels imports it lazily, but be safe).
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine import kernels  # noqa: E402

TRI = kernels.get_ops("triton")
REF = kernels.get_ops("torch")
from engine.kernels import triton_attention  # noqa: E402  (tuning dicts)


def timeit(fn, warmup: int, iters: int, device: str) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paged_from_contiguous(k, v, block_size, gen_device):
    """Scatter contiguous K/V [B, L, Hkv, D] into a paged cache with a random block table.

    Returns k_cache, v_cache [B*L/bs, bs, Hkv, D] and block_tables [B, L/bs] int32.
    """
    B, L, Hkv, D = k.shape
    assert L % block_size == 0, "benchmark contexts are whole blocks"
    nb_per = L // block_size
    num_blocks = B * nb_per
    perm = torch.randperm(num_blocks, device=gen_device)  # non-contiguous blocks
    block_tables = perm.view(B, nb_per).to(torch.int32)
    k_cache = torch.empty(num_blocks, block_size, Hkv, D, dtype=k.dtype, device=k.device)
    v_cache = torch.empty_like(k_cache)
    k_cache[block_tables.long()] = k.view(B, nb_per, block_size, Hkv, D)
    v_cache[block_tables.long()] = v.view(B, nb_per, block_size, Hkv, D)
    return k_cache, v_cache, block_tables


def copy_bandwidth(device, nbytes, warmup, iters):
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16 if device == "cuda" else torch.float16,
                      device=device)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), warmup, iters, device)
    return 2 * src.numel() * src.element_size() / t, t  # read + write


def sdpa_gqa(q, k, v, **kw):
    """SDPA with GQA; falls back to repeating K/V if this torch lacks enable_gqa."""
    try:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    except (TypeError, RuntimeError):
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), **kw)


def bench_decode(a, device, dtype):
    B, L, H, Hkv, D, bs = a.batch, a.context, a.heads, a.kv_heads, a.head_dim, a.block_size
    scale = D ** -0.5
    g = torch.Generator(device=device).manual_seed(0)
    k = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, generator=g)  # [B, L, Hkv, D]
    v = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, generator=g)
    q = torch.randn(B, H, D, device=device, dtype=dtype, generator=g)  # [B, H, D]
    k_cache, v_cache, bt = paged_from_contiguous(k, v, bs, device)
    seq_lens = torch.full((B,), L, dtype=torch.int32, device=device)
    kv_bytes = 2 * B * L * Hkv * D * k.element_size()

    res = {"shape": dict(batch=B, context=L, heads=H, kv_heads=Hkv, head_dim=D, block_size=bs,
                         dtype=str(dtype)), "kv_bytes": kv_bytes}
    # Correctness first (loose: bf16).
    out = TRI.paged_decode_attention(q, k_cache, v_cache, bt, seq_lens, scale)
    ref_B = min(B, 4)
    ref = REF.paged_decode_attention(q[:ref_B], k_cache, v_cache, bt[:ref_B], seq_lens[:ref_B], scale)
    res["max_abs_err_vs_reference"] = (out[:ref_B].float() - ref.float()).abs().max().item()

    run = lambda ns=None: TRI.paged_decode_attention(q, k_cache, v_cache, bt, seq_lens, scale,
                                                     num_splits=ns)
    t = timeit(run, a.warmup, a.iters, device)
    res["triton_default"] = dict(
        num_splits=triton_attention.default_num_splits(B, Hkv, q.device),
        config=dict(triton_attention.DECODE_CONFIG), time_s=t, tb_per_s=kv_bytes / t / 1e12)
    best = res["triton_default"]
    if a.sweep:
        sweep = []
        base = dict(triton_attention.DECODE_CONFIG)
        for block_n in (32, 64) if a.smoke else (32, 64, 128):
            for warps in (4,) if a.smoke else (2, 4, 8):
                for stages in (2,) if a.smoke else (1, 2, 3):
                    for ns in (1, 4) if a.smoke else (1, 2, 4, 8):
                        triton_attention.DECODE_CONFIG.update(block_n=block_n, num_warps=warps,
                                                              num_stages=stages)
                        try:
                            t = timeit(lambda: run(ns), 3, max(5, a.iters // 4), device)
                        except Exception as e:  # e.g. out of shared memory
                            sweep.append(dict(block_n=block_n, num_warps=warps,
                                              num_stages=stages, num_splits=ns, error=str(e)[:80]))
                            continue
                        row = dict(block_n=block_n, num_warps=warps, num_stages=stages,
                                   num_splits=ns, time_s=t, tb_per_s=kv_bytes / t / 1e12)
                        sweep.append(row)
                        if row["tb_per_s"] > best["tb_per_s"]:
                            best = dict(row, config=dict(triton_attention.DECODE_CONFIG))
        triton_attention.DECODE_CONFIG.clear()
        triton_attention.DECODE_CONFIG.update(base)
        res["sweep"] = sweep
    res["triton_best"] = best

    # Contiguous SDPA baseline: q [B, H, 1, D], K/V [B, Hkv, L, D].
    qc = q.unsqueeze(2)
    kc = k.transpose(1, 2).contiguous()
    vc = v.transpose(1, 2).contiguous()
    del k, v
    t = timeit(lambda: sdpa_gqa(qc, kc, vc, scale=scale), a.warmup, a.iters, device)
    res["sdpa_contiguous"] = dict(time_s=t, tb_per_s=kv_bytes / t / 1e12)
    cb, ct = copy_bandwidth(device, a.copy_bytes, a.warmup, a.iters)
    res["copy"] = dict(bytes=a.copy_bytes, time_s=ct, tb_per_s=cb / 1e12)
    res["frac_of_copy_bw"] = best["tb_per_s"] / res["copy"]["tb_per_s"]
    res["vs_sdpa_bw"] = best["tb_per_s"] / res["sdpa_contiguous"]["tb_per_s"]
    res["goals_met"] = dict(copy_90pct=res["frac_of_copy_bw"] >= 0.9,
                            sdpa_within_5pct=res["vs_sdpa_bw"] >= 0.95)
    return res


def bench_prefill(a, device, dtype):
    N, C, H, Hkv, D, bs = a.new_tokens, a.cached, a.heads, a.kv_heads, a.head_dim, a.block_size
    L = N + C
    scale = D ** -0.5
    g = torch.Generator(device=device).manual_seed(1)
    k = torch.randn(1, L, Hkv, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(1, L, Hkv, D, device=device, dtype=dtype, generator=g)
    q = torch.randn(N, H, D, device=device, dtype=dtype, generator=g)  # [N, H, D] new tokens
    k_cache, v_cache, bt = paged_from_contiguous(k, v, bs, device)
    qsl = torch.tensor([0, N], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([L], dtype=torch.int32, device=device)
    pairs = N * C + N * (N + 1) // 2  # (query, key) pairs under the causal mask
    flops = 4 * pairs * H * D  # QK^T and PV, 2 FLOPs per MAC
    res = {"shape": dict(new_tokens=N, cached=C, heads=H, kv_heads=Hkv, head_dim=D,
                         block_size=bs, dtype=str(dtype)), "useful_flops": flops}
    run = lambda: TRI.paged_attention(q, k_cache, v_cache, bt, qsl, seq_lens, scale,
                                      max_query_len=N)
    out = run()
    ref = REF.paged_attention(q, k_cache, v_cache, bt, qsl, seq_lens, scale)
    res["max_abs_err_vs_reference"] = (out.float() - ref.float()).abs().max().item()
    t = timeit(run, a.warmup, a.iters, device)
    res["triton_default"] = dict(config=dict(triton_attention.PREFILL_CONFIG), time_s=t,
                                 tflops=flops / t / 1e12)
    best = res["triton_default"]
    if a.sweep:
        sweep = []
        base = dict(triton_attention.PREFILL_CONFIG)
        for rows in (64,) if a.smoke else (64, 128):
            for block_n in (32, 64) if a.smoke else (32, 64, 128):
                for warps in (8,) if a.smoke else (4, 8):
                    for stages in (2,) if a.smoke else (1, 2, 3):
                        triton_attention.PREFILL_CONFIG.update(rows=rows, block_n=block_n,
                                                               num_warps=warps, num_stages=stages)
                        cfg = dict(triton_attention.PREFILL_CONFIG)
                        try:
                            t = timeit(run, 3, max(5, a.iters // 4), device)
                        except Exception as e:
                            sweep.append(dict(cfg, error=str(e)[:80]))
                            continue
                        row = dict(cfg, time_s=t, tflops=flops / t / 1e12)
                        sweep.append(row)
                        if row["tflops"] > best["tflops"]:
                            best = dict(row, config=cfg)
        triton_attention.PREFILL_CONFIG.clear()
        triton_attention.PREFILL_CONFIG.update(base)
        res["sweep"] = sweep
    res["triton_best"] = best

    qc = q.transpose(0, 1).unsqueeze(0)  # [1, H, N, D]
    kc = k.transpose(1, 2).contiguous()  # [1, Hkv, L, D]
    vc = v.transpose(1, 2).contiguous()
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash_full():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa_gqa(qc, kc, vc, scale=scale)
    else:
        def flash_full():
            return sdpa_gqa(qc, kc, vc, scale=scale)
    t = timeit(flash_full, a.warmup, a.iters, device)
    # Flash over all N x L pairs (no mask): its useful-work throughput and its raw FLOP rate.
    res["sdpa_flash_nomask"] = dict(time_s=t, tflops_useful=flops / t / 1e12,
                                    tflops_executed=4 * N * L * H * D / t / 1e12)
    try:
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(N, L)
        t = timeit(lambda: F.scaled_dot_product_attention(
            qc, kc.repeat_interleave(H // Hkv, 1), vc.repeat_interleave(H // Hkv, 1),
            attn_mask=bias, scale=scale), a.warmup, a.iters, device)
        res["sdpa_causal_lower_right"] = dict(time_s=t, tflops=flops / t / 1e12,
                                              note="K/V repeated to H heads (bias path lacks GQA)")
    except Exception as e:  # older torch or backend refusal
        res["sdpa_causal_lower_right"] = dict(error=str(e)[:120])
    res["vs_flash_throughput"] = best["tflops"] / res["sdpa_flash_nomask"]["tflops_useful"]
    res["goal_met_0p8x_flash"] = res["vs_flash_throughput"] >= 0.8
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (TRITON_INTERPRET=1)")
    p.add_argument("--sweep", action="store_true", help="also sweep tile/launch configs")
    p.add_argument("--cases", nargs="+", default=["decode", "prefill"])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.smoke:
        device, dtype = "cpu", torch.float16
        a.batch, a.context, a.heads, a.kv_heads, a.head_dim, a.block_size = 2, 48, 4, 2, 16, 16
        a.new_tokens, a.cached = 8, 24
        a.warmup, a.iters, a.copy_bytes = 1, 2, 1 << 20  # --sweep runs a 2-4 point grid
    else:
        assert torch.cuda.is_available(), "the benchmark needs a CUDA GPU (or pass --smoke)"
        device, dtype = "cuda", torch.bfloat16
        a.batch, a.context, a.heads, a.kv_heads, a.head_dim, a.block_size = 64, 4096, 32, 8, 128, 16
        a.new_tokens, a.cached = 1024, 3072
        a.warmup, a.iters, a.copy_bytes = 10, 50, 1 << 30
    import triton

    result = {
        "bench": "engine_kernels",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": triton.__version__, "smoke": a.smoke,
    }
    if "decode" in a.cases:
        result["decode"] = bench_decode(a, device, dtype)
        if device == "cuda":
            torch.cuda.empty_cache()
    if "prefill" in a.cases:
        result["prefill"] = bench_prefill(a, device, dtype)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
