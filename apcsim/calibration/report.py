"""What `python -m apcsim.calibration` computes: held-out fit errors, whole-step predictions and
the physics checks of one profile, as one JSON-ready dict."""

from __future__ import annotations

from apcsim.calibration.cost_model import CalibratedCostModel
from apcsim.calibration.holdout import holdout_errors
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig, per_gpu_model
from apcsim.hf_config import resolve_model

TARGETS = {"median_ape_pct": 3.0, "p90_ape_pct": 10.0}


def prediction_plans() -> dict[str, StepPlan]:
    """The named steps whose durations calibration.json predicts."""
    plans = {}
    for n in (512, 1024, 2048, 4096, 8192):  # one request, prefix caching off: nothing hashed
        plans[f"prefill_{n}"] = StepPlan(0, [ScheduledChunk("r", n, 0, (), True)])
    # 1,024 new tokens after a 3,072-token cached prefix: caching is on, so the 4,096-token prompt
    # was hashed and looked up when it was admitted (this step).
    plans["prefill_4096_cached_3072"] = StepPlan(0, [ScheduledChunk("r", 1024, 3072, (), True)], num_hashed_tokens=4096)
    for b in (1, 16, 64, 128):
        for c in (1024, 4096):
            plans[f"decode_b{b}_c{c}"] = StepPlan(0, [], num_cohort=b, cohort_context_sum=b * c)
    return plans


def load_profile_for(hw: HardwareConfig, model: ModelConfig, path: str | None = None, tp: int = 1):
    from apcsim.calibration.match import load_matching_profile

    return load_matching_profile(hw, model, tp, path)


def physics_checks(cost: CalibratedCostModel, hw: HardwareConfig, model: ModelConfig) -> dict:
    """Bounds no real step can beat: a decode step reads every weight once; a prefill does
    2 FLOPs per parameter per token at the GPU's peak."""
    weights_ms = model.weight_bytes / (hw.mem_bw_gbps * 1e9) * 1e3
    decode_ms = cost.step_time(StepPlan(0, [], num_cohort=1, cohort_context_sum=1024)) * 1e3
    flops_ms = 2.0 * model.num_params * 4096 / (hw.peak_tflops * 1e12) * 1e3
    prefill_ms = cost.step_time(prediction_plans()["prefill_4096"]) * 1e3
    return {
        "weight_read_ms": weights_ms,
        "decode_b1_c1024_ms": decode_ms,
        "decode_over_weight_read": decode_ms / weights_ms,
        "prefill_4096_flops_bound_ms": flops_ms,
        "prefill_4096_ms": prefill_ms,
        "prefill_over_flops_bound": prefill_ms / flops_ms,
    }


def _decode_step_comparison(prof, model: ModelConfig, cost: CalibratedCostModel) -> dict:
    """With `decode_step` rows (decode steps replayed from CUDA graphs): each decode prediction
    whole vs as the per-op sum, whose ratio is what the graphs save."""
    if cost.decode_step is None:
        return {}
    ops_only = CalibratedCostModel(prof, model, use_decode_step=False)
    rows = {}
    for name, plan in prediction_plans().items():
        if name.startswith("decode_"):
            whole, summed = cost.step_time(plan) * 1e3, ops_only.step_time(plan) * 1e3
            rows[name] = {"decode_step_ms": whole, "op_sum_ms": summed, "op_sum_over_decode_step": summed / whole}
    return {"decode_step_vs_op_sum": rows}


def calibrate(hw: HardwareConfig, model: ModelConfig, path: str | None = None,
              holdout_fraction: float = 0.2, seed: int = 0, tp: int = 1) -> dict:
    """`tp`: the tensor-parallel degree the profile was measured at (it must say so)."""
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    model = resolve_model(model)
    prof = load_profile_for(hw, model, path, tp)
    try:
        cost = CalibratedCostModel(prof, per_gpu_model(model, tp))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {
        "hardware": hw.name,
        "model": model.name,
        **({"tp": tp} if tp != 1 else {}),
        "profile": prof.path,
        "cost_model": cost.name,
        "holdout": {"fraction": holdout_fraction, "seed": seed, "targets": TARGETS},
        "ops": holdout_errors(prof, holdout_fraction, seed),
        "predictions_ms": {name: cost.step_time(plan) * 1e3 for name, plan in prediction_plans().items()},
        **_decode_step_comparison(prof, model, cost),
        "physics": physics_checks(cost, hw, model),
        "overheads": {"cpu_step_ms": cost.cpu_step_ms, "cpu_per_request_ms": cost.cpu_request_ms,
                      "hash_ns_per_token": cost.hash_ms_per_token * 1e6},
    }
