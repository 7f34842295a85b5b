"""Step-time models: how long one engine step takes, from its step plan.

`CostModel` is the one question the simulator asks ("how long does this step take"). Two answers
exist, picked by the `cost_model` config key in `apcsim.calibration.cost_model.make_cost_model`
(`apcsim.run.build_cost_model(cfg)` for a whole config):

- "calibrated" (the default): `apcsim.calibration.cost_model.CalibratedCostModel`, fitted on the
  profiled kernel timings of the selected (hardware, model) in `apcsim/profiles/` (see README,
  "Calibration profiles");
- "roofline": `RooflineCostModel` here, the spec-sheet bound: each kernel group takes max(FLOPs /
  peak FLOP/s, bytes / HBM bandwidth), and the groups run one after another. It is optimistic
  (100 % of peak, no CPU or launch overhead) and works for any hardware and model preset.

This module imports nothing from `apcsim.calibration`; calibration builds on it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from apcsim.core.plan import StepPlan
from apcsim.hardware import HardwareConfig, ModelConfig, check_tp


class CostModel(Protocol):
    """A step's duration from its plan. A class may set `reads_cohort_tables = False` to promise
    that `step_time` reads the cohort only through `num_cohort` and `cohort_context_sum`, never
    `plan.cohort_chunks()`: the simulator then keeps no block tables for the cohort's members
    (`DecodeCohort.drop_tables`). A class that does not say so gets them."""

    name: str

    def step_time(self, plan: StepPlan) -> float:
        """Seconds for the step described by `plan`."""

    def decode_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> np.ndarray:
        """Seconds of each of `num_steps` pure-decode steps of `num_seqs` requests, whose context
        lengths sum to `context_sum` in the first step and grow by one each per step.
        Returns float64 [num_steps]. A model may also define `decode_stretch_list(num_seqs,
        context_sum, num_steps)`, the same values as a list of floats: the simulator, which reads
        a stretch's times one by one, then calls that (a few steps cost less without an array)."""

    def recompute_time(self, num_tokens: int, context: int) -> float:
        """Marginal seconds to recompute `num_tokens` tokens after `context` cached ones, inside a
        busy batch (what losing a cached block costs when it is needed again)."""


class RooflineCostModel:
    """Per GPU of a tensor-parallel group of `tp` (Megatron-style: heads, MLP width and vocabulary
    split, so each GPU does 1/tp of the FLOPs and reads 1/tp of the weights and its share of the
    KV heads), plus two all-reduces of the step's hidden states per layer (after attention and
    after the MLP), each `interconnect_latency_us` + a ring's 2 (tp-1)/tp of the bytes at
    `interconnect_bw_gbps`. For a mixture-of-experts model a step reads the weights of the experts
    its tokens are routed to (`ModelConfig.experts_touched`), and each token is multiplied with
    the experts it is routed to only."""

    reads_cohort_tables = False  # prices the cohort by its size and total context (see CostModel)

    def __init__(self, hw: HardwareConfig, model: ModelConfig, tp: int = 1) -> None:
        check_tp(hw, model, tp)
        self.name = f"roofline({hw.name}, {model.name})" if tp == 1 else f"roofline({hw.name}, {model.name}, tp={tp})"
        self.flops = hw.peak_tflops * 1e12
        self.bw = hw.mem_bw_gbps * 1e9
        layers = model.num_layers
        self.linear_flops_per_token = 2.0 * layers * model.active_params_per_layer / tp
        self.head_flops_per_sample = 2.0 * model.lm_head_params / tp
        self.weight_bytes = float(model.weight_bytes - model.embedding_params * model.dtype_bytes) / tp
        self.model = model if model.is_moe else None
        if model.is_moe:
            # Read every step: all but the experts; the experts: as many as the tokens touch.
            expert_bytes = float(model.expert_params * model.dtype_bytes)
            self.expert_bytes_per_layer = layers * expert_bytes / tp
            self.weight_bytes -= model.num_experts * self.expert_bytes_per_layer
        # Attention: QK^T and PV, 2 FLOPs per multiply-add each, per (query token, key token) pair.
        self.attn_flops_per_pair = 4.0 * layers * model.num_heads * model.head_dim / tp
        self.kv_bytes_per_token = float(model.kv_bytes_per_token_per_gpu(tp))
        self.tp = tp
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp * model.hidden_size * model.dtype_bytes / (hw.interconnect_bw_gbps * 1e9)
            self.allreduce_s_per_token = 2 * layers * ring
            self.allreduce_s_per_step = 2 * layers * hw.interconnect_latency_us * 1e-6

    def _weights_read(self, tokens):
        if self.model is None:
            return self.weight_bytes
        return self.weight_bytes + self.model.experts_touched(tokens) * self.expert_bytes_per_layer

    def _time(self, tokens, samples, pairs, kv_tokens_read, kv_tokens_written):
        """Works on scalars or numpy arrays alike."""
        linear = np.maximum((tokens * self.linear_flops_per_token + samples * self.head_flops_per_sample) / self.flops,
                            self._weights_read(tokens) / self.bw)
        attn = np.maximum(pairs * self.attn_flops_per_pair / self.flops,
                          (kv_tokens_read + kv_tokens_written) * self.kv_bytes_per_token / self.bw)
        if self.tp == 1:
            return linear + attn
        return linear + attn + (self.allreduce_s_per_step + tokens * self.allreduce_s_per_token)

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
        # In a busy batch the weights are read anyway: the marginal cost is the FLOPs (and at
        # tp > 1 the tokens' share of the all-reduces).
        t = (num_tokens * self.linear_flops_per_token + pairs * self.attn_flops_per_pair) / self.flops
        return t if self.tp == 1 else t + num_tokens * self.allreduce_s_per_token
