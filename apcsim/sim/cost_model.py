"""Step-time models: how long one engine step takes, from its step plan.

`make_cost_model` picks one by the `cost_model` config key (`apcsim.run.build_cost_model(cfg)`
for a whole config):

- "calibrated" (the default): `apcsim.sim.calibrated.CalibratedCostModel`, fitted on the profiled
  kernel timings of the selected (hardware, model) in `apcsim/profiles/` (see README,
  "Calibration profiles");
- "roofline": `RooflineCostModel`, the spec-sheet bound: each kernel group takes max(FLOPs / peak
  FLOP/s, bytes / HBM bandwidth), and the groups run one after another. It is optimistic (100 %
  of peak, no CPU or launch overhead) and works for any hardware and model preset.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from apcsim.core.plan import StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig

COST_MODELS = ("calibrated", "roofline")


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


def make_cost_model(name: str, hw: HardwareConfig, model: ModelConfig) -> CostModel:
    """The cost model named by the `cost_model` config key; a bad name or a missing or malformed
    profile is a ConfigError with a one-line message."""
    if name == "roofline":
        return RooflineCostModel(hw, model)
    if name != "calibrated":
        raise ConfigError(f"cost_model must be one of {', '.join(COST_MODELS)}, got {name!r}")
    from apcsim.calibration.profile import available_profiles, profile_path
    from apcsim.sim.calibrated import load_calibrated

    path = profile_path(hw.name, model.name)
    if path is None:
        have = ", ".join(f"hardware={p.split('/')[0]} model={p.split('/')[1]}" for p in available_profiles()) or "none"
        raise ConfigError(
            f"no calibration profile for hardware={hw.name} model={model.name} (available: {have}); "
            f"use cost_model=roofline for the spec-sheet model"
        )
    try:
        return load_calibrated(path, model)
    except ValueError as e:
        raise ConfigError(f"calibration profile {path}: {e}") from None
