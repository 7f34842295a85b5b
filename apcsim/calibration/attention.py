"""Attention fits: prefill by (chunk tokens, context), decode by (batch, context sum).

Both return milliseconds per transformer layer and are built on `fit.Grid`.

Adapting the measured attention shape to the model's (Vidur has attention only for
Llama-2-70B at TP2: 32 query and 4 KV heads of 128 per GPU; Llama-3-8B has 32 and 8):

- Prefill (FlashAttention over a chunk) is compute-bound: its FLOPs are 4 * heads * head_dim per
  (query, key) pair and do not depend on the number of KV heads, so the time is scaled by the
  ratio of query heads only (1.0 for Llama-3-8B from this data).
- Decode is memory-bound: each step reads every context token's K and V, whose bytes are
  proportional to the KV heads. Each batch row of the table is split into a fixed part, its value
  at the smallest profiled context (32 tokens: launch, Q load, split-KV combine), and the
  context-dependent rest, which is scaled by kv_ratio = model KV heads / profiled KV heads:
  t'(b, c) = t(b, c) + (kv_ratio - 1) * (t(b, c) - t(b, c_min)). For Llama-3-8B kv_ratio = 2. This
  treats the first 32 context tokens as fixed (at most a few microseconds of bytes), and assumes
  the kernel keeps the same bandwidth with twice the KV heads, which holds once the batch fills
  the GPU (at batch 1 the doubled part is a few microseconds either way).
"""

from __future__ import annotations

import numpy as np

from apcsim.calibration.fit import Grid


class PrefillAttention:
    """Attention of one prefill chunk of n new tokens after c tokens of context.

    Inside the profile: the grid (n, c). Beyond the largest profiled context: linear in c with the
    row's least-squares slope (the cross term n * c of attention work is linear in c; rows the
    profile covers too briefly to fit get the per-(query, key)-pair slope of the long rows times
    n). Beyond the largest profiled chunk n_max: the fixed part of a call (the time of the
    smallest chunk at c = 0: launch, one tile) stays, the rest of the causal part (the time at
    c = 0, n^2 / 2 pairs) grows as (n / n_max)^2 and the context part as n / n_max, that is
    constant time per pair at the efficiency reached at n_max. Below the smallest chunk: the
    smallest chunk's time (one tile of queries costs what a full tile costs).
    """

    MIN_ROW_POINTS = 3
    MIN_ROW_SPAN = 512

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.n_max = float(grid.xs[-1])
        self._causal_max = grid(self.n_max, 0.0)
        # What a call costs whatever its size; scaling it with n^2 would overstate long chunks
        # wherever it is not negligible (a small model, or a CPU profile).
        self._fixed = min(grid(float(grid.xs[0]), 0.0), self._causal_max)

    @classmethod
    def fit(cls, n, ctx, t, scale: float = 1.0) -> "PrefillAttention":
        n, ctx = np.asarray(n), np.asarray(ctx)
        t = np.asarray(t, dtype=np.float64) * scale
        ns = np.unique(n)
        slopes = np.full(len(ns), np.nan)
        for i, k in enumerate(ns):
            m = n == k
            cs, idx = np.unique(ctx[m], return_inverse=True)
            if len(cs) >= cls.MIN_ROW_POINTS and cs[-1] - cs[0] >= cls.MIN_ROW_SPAN:
                means = np.bincount(idx, weights=t[m]) / np.bincount(idx)
                slopes[i] = max(0.0, np.polyfit(cs.astype(np.float64), means, 1)[0])
        ok = ~np.isnan(slopes)
        if not ok.any():
            raise ValueError("attn_prefill: no chunk size is profiled over enough contexts to fit a slope")
        long_rows = ok & (ns >= np.quantile(ns[ok], 0.75))
        per_pair = float(np.median(slopes[long_rows] / ns[long_rows]))
        slopes[~ok] = per_pair * ns[~ok]
        return cls(Grid.fit(n, ctx, t, row_slopes=slopes))

    def __call__(self, n: float, c: float) -> float:
        if n > self.n_max:
            r = n / self.n_max
            a, f = self._causal_max, self._fixed
            return f + (a - f) * r * r + (self.grid(self.n_max, c) - a) * r
        return self.grid(n, c)

    def per_pair_ms(self) -> tuple[float, float]:
        """(causal, context) milliseconds per (query, key) pair at the largest profiled chunk."""
        causal = (self._causal_max - self._fixed) / (self.n_max * self.n_max / 2.0)
        context = float(self.grid.sy[-1]) / self.n_max
        return causal, context


class DecodeAttention:
    """Decode attention of b requests whose context lengths sum to C, looked up as the profile's
    (batch b, every request at context C / b). A memory-bound kernel's time follows the bytes it
    reads, which is the sum of the contexts, so a batch of mixed lengths costs what the same batch
    at the mean length costs. A function of (b, C) only: that is all the simulator's lazy decode
    cohort exposes."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    @classmethod
    def fit(cls, b, ctx, t, kv_ratio: float = 1.0) -> "DecodeAttention":
        def scale_kv(table: np.ndarray) -> np.ndarray:
            return table + (kv_ratio - 1.0) * (table - table[:, :1])

        return cls(Grid.fit(b, ctx, t, transform=None if kv_ratio == 1.0 else scale_kv))

    def __call__(self, b: int, context_sum: int) -> float:
        if b <= 0:
            return 0.0
        fb = float(b)
        return self.grid(fb, float(context_sum) / fb)

    def along(self, b: int, context_sums) -> list[float]:
        """`eval` in plain Python (faster for a few sums), bit for bit the same."""
        fb = float(b)
        return self.grid.along_y(fb, [float(c) / fb for c in context_sums])

    def eval(self, b: int, context_sums: np.ndarray) -> np.ndarray:
        """The same as calling it for each context sum, bit for bit."""
        fb = float(b)
        return self.grid.eval_y(fb, np.asarray(context_sums, dtype=np.float64) / fb)
