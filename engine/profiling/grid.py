"""The points `python -m engine.profile` measures, and how long a grid takes.

`full` is sized for an 8B model on one H100 within the engine's default limits
(max_num_batched_tokens 8192, max_num_seqs 256): token counts to 8,192, prefill chunks to 8,192
new tokens after up to 16,384 cached ones, decode batches to 256 at contexts to 16,384 as far as
`max_decode_kv_tokens` (what an H100's KV cache holds for Llama-3-8B at 0.9 utilisation is about
450K tokens; the cap keeps one layer's test cache at 2 GiB). `small` runs in seconds on a CPU with
`model=tiny` (CI). The calibrated cost model interpolates between these points and extrapolates
linearly beyond them (`apcsim.calibration.fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apcsim.calibration.decode_buckets import bucket_of
from apcsim.hardware import ModelConfig


@dataclass(frozen=True)
class ProfileGrid:
    tokens: tuple[int, ...]  # token-level ops, by tokens in the step
    samples: tuple[int, ...]  # LM head, by sampled tokens
    prefill_new: tuple[int, ...]  # attn_prefill: new tokens of the chunk (>= 2: one token is a decode)
    prefill_context: tuple[int, ...]  # attn_prefill: cached tokens before the chunk
    decode_batch: tuple[int, ...]  # attn_decode: requests
    decode_context: tuple[int, ...]  # attn_decode: tokens before the step, each request
    max_decode_kv_tokens: int  # decode points with batch * (context + 1) above this are skipped
    decode_step_batch: tuple[int, ...]  # decode_step (whole graphed decode steps): requests
    decode_step_context: tuple[int, ...]  # decode_step: tokens before the step, each request
    max_decode_step_kv_tokens: int  # decode_step points above this many KV tokens (all layers) are skipped
    cpu_batch: tuple[int, ...]  # cpu_step: requests decoding in the step
    cpu_steps: int  # decode steps timed per batch size
    hash_tokens: tuple[int, ...]  # cpu_hash: prompt tokens hashed and looked up

    def decode_points(self) -> list[tuple[int, int]]:
        return [(b, c) for b in self.decode_batch for c in self.decode_context
                if b * (c + 1) <= self.max_decode_kv_tokens]

    def decode_step_points(self) -> list[tuple[int, int]]:
        return [(b, c) for b in self.decode_step_batch for c in self.decode_step_context
                if b * (c + 1) <= self.max_decode_step_kv_tokens]

    def prefill_points(self) -> list[tuple[int, int]]:
        return [(n, c) for n in self.prefill_new for c in self.prefill_context]

    def check(self) -> None:
        if min(self.prefill_new) < 2:
            raise ValueError("prefill_new must be >= 2 (a one-token chunk is a decode)")
        if min(self.tokens + self.samples + self.decode_batch + self.cpu_batch + self.hash_tokens) < 1:
            raise ValueError("grid counts must be >= 1")
        ctx = sorted(self.prefill_context)
        # PrefillAttention.fit needs a row profiled over >= 3 contexts spanning >= 512 tokens.
        if len(ctx) < 3 or ctx[-1] - ctx[0] < 512:
            raise ValueError("prefill_context needs >= 3 values spanning >= 512 tokens")
        if not self.decode_points():
            raise ValueError("no decode point fits max_decode_kv_tokens")
        if any(bucket_of(b) != b for b in self.decode_step_batch):
            raise ValueError("decode_step_batch must be graph buckets (1, 2, 4 or multiples of 8): the engine runs no other")
        if not self.decode_step_points():
            raise ValueError("no decode_step point fits max_decode_step_kv_tokens")


GRIDS: dict[str, ProfileGrid] = {
    "full": ProfileGrid(
        tokens=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024,
                1280, 1536, 2048, 3072, 4096, 6144, 8192),
        samples=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        prefill_new=(2, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        prefill_context=(0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        decode_batch=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256),
        decode_context=(16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        max_decode_kv_tokens=524288,
        # Batches are graph buckets; 262,144 tokens of all 32 layers' KV is 32 GiB for Llama-3-8B.
        decode_step_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        decode_step_context=(128, 512, 1024, 2048, 4096, 8192),
        max_decode_step_kv_tokens=262144,
        cpu_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        cpu_steps=20,
        hash_tokens=(256, 1024, 4096, 16384),
    ),
    "small": ProfileGrid(
        tokens=(1, 4, 16, 64, 256),
        samples=(1, 4, 16),
        prefill_new=(2, 16, 64),
        prefill_context=(0, 256, 768),
        decode_batch=(1, 2, 4, 8),
        decode_context=(16, 64, 256),
        max_decode_kv_tokens=4096,
        decode_step_batch=(1, 2, 4, 8),
        decode_step_context=(16, 64, 256),
        max_decode_step_kv_tokens=4096,
        cpu_batch=(1, 2, 4, 8),
        cpu_steps=5,
        hash_tokens=(256, 1024),
    ),
}


def estimate_seconds(grid: ProfileGrid, model: ModelConfig, *, peak_tflops: float, mem_bw_gbps: float,
                     warmup: int, repeats: int, efficiency: float = 0.25, floor_s: float = 20e-6,
                     target_s: float = 1e-3, max_iters: int = 20, fixed_s: float = 90.0,
                     decode_graphs: bool = True) -> float:
    """Device time of a grid, pessimistically: every measured call takes max(FLOPs, bytes) at
    `efficiency` of the spec sheet, or `floor_s` (a launch), and is made `warmup` + 1 + `repeats`
    x iters times (iters as `OpTimer` picks them); plus the decode steps of the CPU-overhead
    runs (a whole forward each), the model's random initialisation (one write of its weights), and
    `fixed_s` for what does not scale with the grid: imports, Triton's JIT compilation of each
    kernel specialisation (a few dozen: block_m, num_splits, dtype; ~1-3 s each), cuBLAS
    heuristics. With `decode_graphs`, also the whole decode steps and every graph capture (two
    warm-up forwards and the captured one, at the largest batch's cost)."""
    peak, bw = peak_tflops * 1e12 * efficiency, mem_bw_gbps * 1e9 * efficiency
    b = model.dtype_bytes
    e, kv = model.hidden_size, model.num_kv_heads * model.head_dim

    def calls(t: float) -> float:
        iters = max(1, min(max_iters, math.ceil(target_s / t)))
        return t * (warmup + 1 + repeats * iters)

    def cost(flops: float, nbytes: float) -> float:
        return max(flops / peak, nbytes / bw, floor_s)

    total = 0.0
    per_layer_params = model.params_per_layer
    for t in grid.tokens:  # all token ops of one layer at t tokens (~11 timed ops)
        total += 11 * calls(cost(2.0 * t * per_layer_params / 11, (per_layer_params + 8 * t * e) * b / 11))
    for s in grid.samples:
        total += calls(cost(2.0 * s * model.lm_head_params, model.lm_head_params * b))
    attn_flops = 4.0 * model.num_heads * model.head_dim
    for n, c in grid.prefill_points():
        total += calls(cost(attn_flops * n * (c + n / 2), (c + n) * 2 * kv * b))
    for bb, c in grid.decode_points():
        total += calls(cost(attn_flops * bb * c, bb * (c + 1) * 2 * kv * b))
    step = cost(2.0 * model.num_params, model.weight_bytes)
    if decode_graphs:
        kv_token = 2 * kv * b * model.num_layers  # KV bytes of one token, all layers
        for bb, c in grid.decode_step_points():  # whole graphed decode steps
            total += calls(cost(2.0 * model.num_params * bb, model.weight_bytes + bb * (c + 1) * kv_token))
        captures = len(set(grid.decode_step_batch)) + len(grid.cpu_batch)
        top = max(grid.decode_step_batch + grid.cpu_batch)
        total += 3 * captures * max(cost(2.0 * model.num_params * top, model.weight_bytes), 30 * model.num_layers * floor_s)
    total += sum(grid.cpu_steps + 4 for _ in grid.cpu_batch) * max(step, 30 * model.num_layers * floor_s)
    total += model.weight_bytes / bw
    return total + fixed_s
