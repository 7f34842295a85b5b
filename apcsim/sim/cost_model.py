"""Step-time models: how long one engine step takes, from its step plan.

`RooflineCostModel` is the spec-sheet model used until calibration lands: each kernel group
takes max(FLOPs / peak FLOP/s, bytes / HBM bandwidth), and the groups run one after another. It
is an optimistic bound (100 % of peak, no CPU or launch overhead), named as such in every output.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from apcsim.core.plan import StepPlan
from apcsim.hardware import HardwareConfig, ModelConfig


class CostModel(Protocol):
    name: str

    def step_time(self, plan: StepPlan) -> float:
        """Seconds for the step described by `plan`."""

    def decode_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> np.ndarray:
        """Seconds of each of `num_steps` pure-decode steps of `num_seqs` requests, whose context
        lengths sum to `context_sum` in the first step and grow by one each per step.
        Returns float64 [num_steps]."""

    def recompute_time(self, num_tokens: int, context: int) -> float:
        """Marginal seconds to recompute `num_tokens` tokens after `context` cached ones, inside a
        busy batch (what losing a cached block costs when it is needed again)."""


class RooflineCostModel:
    def __init__(self, hw: HardwareConfig, model: ModelConfig) -> None:
        self.name = f"roofline({hw.name}, {model.name})"
        self.flops = hw.peak_tflops * 1e12
        self.bw = hw.mem_bw_gbps * 1e9
        layers = model.num_layers
        self.linear_flops_per_token = 2.0 * layers * model.params_per_layer
        self.head_flops_per_sample = 2.0 * model.lm_head_params
        self.weight_bytes = float(model.weight_bytes - model.embedding_params * model.dtype_bytes)
        # Attention: QK^T and PV, 2 FLOPs per multiply-add each, per (query token, key token) pair.
        self.attn_flops_per_pair = 4.0 * layers * model.num_heads * model.head_dim
        self.kv_bytes_per_token = float(model.kv_bytes_per_token)

    def _time(self, tokens, samples, pairs, kv_tokens_read, kv_tokens_written):
        """Works on scalars or numpy arrays alike."""
        linear = np.maximum((tokens * self.linear_flops_per_token + samples * self.head_flops_per_sample) / self.flops,
                            self.weight_bytes / self.bw)
        attn = np.maximum(pairs * self.attn_flops_per_pair / self.flops,
                          (kv_tokens_read + kv_tokens_written) * self.kv_bytes_per_token / self.bw)
        return linear + attn

    def step_time(self, plan: StepPlan) -> float:
        tokens = plan.num_cohort
        samples = plan.num_cohort
        # A decode token attends to its context plus itself.
        pairs = plan.cohort_context_sum + plan.num_cohort
        kv_read = plan.cohort_context_sum + plan.num_cohort
        for c in plan.chunks:
            n, ctx = c.num_new_tokens, c.num_context_tokens
            tokens += n
            samples += c.samples
            pairs += n * ctx + n * (n + 1) // 2  # causal among the new tokens
            kv_read += ctx + n
        if tokens == 0:
            return 0.0
        return float(self._time(tokens, samples, pairs, kv_read, tokens))

    def decode_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> np.ndarray:
        ctx = context_sum + num_seqs * np.arange(num_steps, dtype=np.float64)  # [num_steps]
        return self._time(float(num_seqs), float(num_seqs), ctx + num_seqs, ctx + num_seqs, float(num_seqs))

    def recompute_time(self, num_tokens: int, context: int) -> float:
        pairs = num_tokens * context + num_tokens * (num_tokens + 1) // 2
        # In a busy batch the weights are read anyway: the marginal cost is the FLOPs.
        return (num_tokens * self.linear_flops_per_token + pairs * self.attn_flops_per_pair) / self.flops
