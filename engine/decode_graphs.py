"""Pure-decode steps through static, padded input buffers, replayed from CUDA graphs on the GPU.

A decode step of an 8B model launches several hundred small kernels (norms, rotary, GEMMs of a
few rows, attention, residual adds). At small batches their launch overhead, not the GPU, sets the
step time, so the engine captures the whole decode forward (model, greedy argmax) once per batch
*bucket* and replays it: one launch per step. vLLM and SGLang do the same.

A graph replays fixed addresses and shapes, hence:

- Inputs live in static buffers sized for the largest bucket; a step only copies into them.
  Invariant: no buffer is reallocated after capture.
- A batch of n requests runs as bucket_of(n) (`apcsim.calibration.decode_buckets`: 1, 2, 4, then
  multiples of 8; the simulator costs a decode step at that bucket too). Its padding rows are
  inert: slot -1 (the KV write skips it), sequence length 1 reading key 0 of block 0 (finite,
  whatever it holds), token 0 at position 0; their logits are computed and discarded. Every op of the forward is
  row-wise or a GEMM over rows, so a padding row cannot change a real row's result.
- The block table has a fixed width (`max_blocks_per_seq`); a step whose requests need more
  falls back to the eager forward, as does a batch above the largest bucket.
- The split-KV decode kernel picks its split count from the batch shape only (no host sync), so
  it is capturable; the split count of a bucket is that of the bucket's size.

Memory: the graphs share one private memory pool, captured largest first, so a bucket's
intermediates reuse the larger buckets' (only one graph runs at a time). What a graph returns
stays allocated, so the graphs return only their greedy tokens ([b] int32 each); the logits,
needed only by tests that compare them (`keep_logits`), are copied into one static [Bmax, V] fp32
buffer that every bucket shares, not kept per bucket (that would be sum(b) x V x 4 bytes: 2.2 GB
for Llama-3-8B with buckets up to 256). `graph_memory_bytes` estimates the total for KV sizing.

Modes: `graph` captures and replays (CUDA only); `padded` runs the very same padded forward on
the same static buffers without capturing, which is how the CPU tests check the padding, and a
way to tell a graph problem from a padding problem on the GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from apcsim.calibration.decode_buckets import batch_buckets, bucket_of
from apcsim.hardware import ModelConfig, activation_bytes
from engine.model import AttnMetadata, LlamaForCausalLM

MODES = ("graph", "padded")


def graph_memory_bytes(model: ModelConfig, max_batch: int, max_blocks_per_seq: int, keep_logits: bool) -> int:
    """Memory the decode graphs hold beside the eager forward's: the pool (one forward of the
    largest bucket: its activations and logits), the static inputs, and the shared logits
    buffer when kept."""
    b = bucket_of(max_batch)
    # int64 ids, positions, slots and sampled rows; int32 lengths and block table; int32 query starts [b + 1]
    inputs = b * (4 * 8 + 4 + 4 * max_blocks_per_seq) + 4 * (b + 1)
    return activation_bytes(model, b, b) + inputs + (b * model.vocab_size * 4 if keep_logits else 0)


class DecodeGraphs:
    """Runs decode steps (one new token per request) of up to `max_batch` requests whose block
    tables have at most `max_blocks_per_seq` entries, through static buffers, one CUDA graph per
    bucket in mode `graph`."""

    def __init__(self, model: LlamaForCausalLM, ops, k_caches: torch.Tensor, v_caches: torch.Tensor, *,
                 max_batch: int, max_blocks_per_seq: int, mode: str = "graph",
                 capture_only: list[int] | None = None, keep_logits: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown decode graph mode {mode!r}; expected one of {MODES}")
        if max_blocks_per_seq < 1:
            raise ValueError(f"max_blocks_per_seq must be >= 1, got {max_blocks_per_seq}")
        p = model.lm_head.weight
        if mode == "graph" and p.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device; mode 'padded' runs the same path without capture")
        self.model, self.ops = model, ops
        self.k_caches, self.v_caches = k_caches, v_caches
        self.mode = mode
        self.device = p.device
        self.buckets = batch_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        # Buckets to capture: all, or (a profiler timing known batches) only those; a batch whose
        # bucket was not captured is refused by `fits` and runs eagerly.
        self.captured = self.buckets if capture_only is None else sorted(set(capture_only))
        if not set(self.captured) <= set(self.buckets):
            raise ValueError(f"capture_only {capture_only} must be buckets up to {self.max_batch}: {self.buckets}")
        self.max_blocks_per_seq = max_blocks_per_seq
        n, dev = self.max_batch, self.device
        # Static inputs, sized for the largest bucket (a bucket b uses rows [:b]).
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)  # [Bmax]
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)  # [Bmax]
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=dev)  # [Bmax]
        self.block_tables = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, device=dev)  # [Bmax, MB]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)  # [Bmax]
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)  # [Bmax+1]: one token each
        self.rows = torch.arange(n, dtype=torch.int64, device=dev)  # [Bmax]: every row is sampled
        # Each bucket's greedy tokens (int32 [b]); in mode `graph` the graph's own output tensor,
        # rewritten by every replay. Logits, when kept, go to one buffer all buckets share.
        self.logits = (torch.empty((n, model.lm_head.weight.shape[0]), dtype=torch.float32, device=dev)  # [Bmax, V]
                       if keep_logits else None)
        self._tokens: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.replays = 0  # steps run through this object (for tests and the run's info)
        self._real_rows = 0  # rows [:_real_rows] may hold a real request; the rest are padding
        if mode == "graph":
            self._capture()  # before any step is loaded: capturing runs on padding rows

    # -- capture -------------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, b: int) -> torch.Tensor:
        """Greedy tokens (int32 [b]) of the loaded step; its logits into `self.logits[:b]` if kept."""
        meta = AttnMetadata(slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b],
                            query_start_loc=self.query_start_loc[: b + 1], seq_lens=self.seq_lens[:b],
                            logits_indices=self.rows[:b], max_query_len=1)
        logits = self.model(self.input_ids[:b], self.positions[:b], meta, self.k_caches, self.v_caches, self.ops)
        if self.logits is not None:
            self.logits[:b].copy_(logits)  # [b, V]
        return logits.argmax(dim=-1).to(torch.int32)  # [b]

    def _capture(self) -> None:
        """Capture each bucket's graph (largest first, sharing one memory pool). The static
        inputs hold only padding here, so the warm-up runs write no KV."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for b in reversed(self.captured):
            # Warm up off the capture (Triton JIT, cuBLAS workspaces), on a side stream as
            # torch.cuda.graph requires for lazily initialised state.
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(b)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._tokens[b] = self._forward(b)
            self._graphs[b] = graph
        torch.cuda.synchronize(self.device)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    # -- one step ------------------------------------------------------------------------------
    def fits(self, batch: int, blocks_per_seq: int) -> bool:
        return (1 <= batch <= self.max_batch and blocks_per_seq <= self.max_blocks_per_seq
                and bucket_of(batch) in self.captured)

    def _reset_padding(self, n: int) -> None:
        """Rows n.. become inert padding rows (only those a previous step filled need it)."""
        stop = self._real_rows  # the buffers start as padding (see __init__)
        if stop > n:
            self.input_ids[n:stop].zero_()
            self.positions[n:stop].zero_()
            self.slot_mapping[n:stop].fill_(-1)
            self.seq_lens[n:stop].fill_(1)
            self.block_tables[n:stop, 0].zero_()
        self._real_rows = n

    def load(self, input_ids: np.ndarray, positions: np.ndarray, slot_mapping: np.ndarray,
             block_tables: np.ndarray, seq_lens: np.ndarray) -> int:
        """Copy one decode step's host arrays ([n] each, block_tables [n, w] with w <= the static
        width) into the static buffers; returns the bucket that will run it."""
        n, w = block_tables.shape
        if not self.fits(n, w):
            raise ValueError(f"a decode batch of {n} x {w} blocks does not fit {self.max_batch} x {self.max_blocks_per_seq}")
        def put(dst: torch.Tensor, a: np.ndarray) -> None:
            dst.copy_(torch.from_numpy(np.ascontiguousarray(a)), non_blocking=True)

        put(self.input_ids[:n], input_ids.astype(np.int64, copy=False))
        put(self.positions[:n], positions.astype(np.int64, copy=False))
        put(self.slot_mapping[:n], slot_mapping.astype(np.int64, copy=False))
        put(self.seq_lens[:n], seq_lens.astype(np.int32, copy=False))
        # Entries past w of a row are stale but never read: a row reads cdiv(seq_len, block_size).
        put(self.block_tables[:n, :w], block_tables.astype(np.int32, copy=False))
        self._reset_padding(n)
        return bucket_of(n)

    @torch.inference_mode()
    def run(self, n: int) -> tuple[np.ndarray, torch.Tensor | None]:
        """The step last `load`ed with n requests: (int32 tokens [n] on the host, fp32 logits
        [n, V] or None when not kept). The logits are a view of a static buffer, valid until the
        next step."""
        b = bucket_of(n)
        if self.mode == "graph":
            self._graphs[b].replay()
            tokens = self._tokens[b]
        else:
            tokens = self._forward(b)
        self.replays += 1
        return tokens[:n].cpu().numpy(), None if self.logits is None else self.logits[:n]  # .cpu() waits
