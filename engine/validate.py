"""`python -m engine.validate +policy=lru block_size=16 workload=... hardware=h100`: run a workload on
the real engine, then in the simulator with the calibrated cost model of the profiled hardware,
and compare their metrics.

The simulator runs the engine's config with three things pinned to the engine's: the KV cache
size (the engine's block count), the cost model (the profile of `hardware=`/`model=`, or
`profile=PATH`; the engine's cost-aware policies get the same recompute estimate), and the
arrival mode (`online=false`: every request at t=0 in both). Writes to the run directory:

- `validation.json`: `{metric: {"sim", "engine", "error_pct", "abs_error", "goal", "within_goal"}}`,
  metric names as in metrics.json, percentiles as `ttft_s.p50`; error_pct = (sim - engine) /
  engine * 100; when the engine's value is 0 it is 0 if the simulator's is 0 too, else null (the
  absolute error is still given);
- `validation_info.json`: config, profile, device, and whether both made the same scheduling
  decisions (per request: prefix hit, preemptions; per step: plans, when the simulator steps
  every step, `skip_quiet=false`);
- `validation.html`: the table and figures; `engine/` and `sim/`: each run's own outputs.

`validation_info.json` also has `step_costs`: per kind of step, the cost model's time for each of
the engine's plans against the engine's measured time. `record=DIR` saves the run as a bundle;
`recorded=DIR [profile=CSV]` re-runs only the simulator side against a bundle, on any machine,
and writes the same files but `engine/` (engine/recorded.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.errors import ApcsimError, ConfigError, exit_bad_input
from engine.config import EngineConfig, register_engine_config

PROG = "engine.validate"

# (metric, dotted path in metrics.json, goal kind, goal value) — the H100 goals for
# online arrivals: "pct" is |error_pct| <= value, "abs" is |sim - engine| <= value (hit rate in
# points of a fraction), "pct_or_abs" either.
METRICS: tuple[tuple[str, str, float | tuple[float, float]], ...] = (
    ("prefix_cache_hit_rate", "abs", 0.005),
    ("prompt_tokens_computed", "pct", 1.0),
    ("num_preemptions", "pct_or_abs", (10.0, 2.0)),
    ("output_throughput_tok_s", "pct", 3.0),
    ("total_token_throughput_tok_s", "pct", 3.0),
    ("ttft_s.p50", "pct", 5.0),
    ("ttft_s.p90", "pct", 10.0),
    ("ttft_s.p99", "pct", 10.0),
    ("tpot_s.p50", "pct", 5.0),
    ("tpot_s.p90", "pct", 10.0),
    ("e2e_s.p50", "pct", 5.0),
    ("e2e_s.p90", "pct", 10.0),
)


@dataclass
class ValidateConfig(EngineConfig):
    profile: Optional[str] = None  # a profile CSV; None: apcsim/profiles/<hardware>/<model>.csv
    record: Optional[str] = None  # also save the run as a bundle in this directory (engine.recorded)
    recorded: Optional[str] = None  # replay this bundle's simulator side instead of running the engine


def register_validate_config() -> None:
    register_engine_config()
    ConfigStore.instance().store(name="engine_validate_schema", node=ValidateConfig)


def _get(m: dict, dotted: str):
    for k in dotted.split("."):
        m = m[k]
    return m


def error_pct(sim, engine) -> float | None:
    """(sim - engine) / engine * 100; 0 when both are 0; None when only the engine's is 0 or
    either is missing."""
    if sim is None or engine is None:
        return None
    if engine == 0:
        return 0.0 if sim == 0 else None
    return (sim - engine) / engine * 100.0


def _within(kind: str, goal, err: float | None, diff: float | None) -> bool | None:
    if diff is None:
        return None
    if kind == "abs":
        return abs(diff) <= goal
    if kind == "pct":
        return None if err is None else abs(err) <= goal
    pct, absolute = goal
    return abs(diff) <= absolute or (err is not None and abs(err) <= pct)


def compare_metrics(sim: dict, engine: dict) -> dict:
    out = {}
    for name, kind, goal in METRICS:
        s, e = _get(sim, name), _get(engine, name)
        err = error_pct(s, e)
        diff = None if s is None or e is None else s - e
        out[name] = {"sim": s, "engine": e, "error_pct": err, "abs_error": diff,
                     "goal": {"kind": kind, "value": list(goal) if isinstance(goal, tuple) else goal},
                     "within_goal": _within(kind, goal, err, diff)}
    return out


def compare_decisions(engine_requests, sim_requests, engine_plans: list, sim_plans: list | None) -> dict:
    """Whether both served each request alike (prefix hit at admission, preemptions, outputs)
    and, when the simulator stepped every step, whether every step's plan was the same."""
    from engine.recorded import request_outcome

    return compare_decisions_outcomes({r.request_id: request_outcome(r) for r in engine_requests},
                                      {r.request_id: request_outcome(r) for r in sim_requests}, engine_plans, sim_plans)


def compare_decisions_outcomes(engine: dict, sim: dict, engine_plans: list, sim_plans: list | None) -> dict:
    """compare_decisions on {request id: (cached tokens, preemptions, outputs, status)} in the
    engine's request order (a recorded run keeps only those)."""
    differ = []
    for rid, a in engine.items():
        b = sim[rid]
        if a != b:
            differ.append({"request_id": rid, "engine": a, "sim": b})
    first_diff = None
    if sim_plans is not None:
        for i, (a, b) in enumerate(zip(engine_plans, sim_plans)):
            if a != b:
                first_diff = i
                break
        if first_diff is None and len(engine_plans) != len(sim_plans):
            first_diff = min(len(engine_plans), len(sim_plans))
    return {
        "requests_compared": len(engine),
        "requests_differing": len(differ),
        "differing": differ[:20],  # (cached tokens, preemptions, output tokens, status)
        "plans_compared": None if sim_plans is None else min(len(engine_plans), len(sim_plans)),
        "plans_identical": None if sim_plans is None else first_diff is None,
        "first_differing_step": first_diff,
    }


@dataclass
class ValidationOutcome:
    comparison: dict
    info: dict
    engine: object  # engine.runner.EngineOutcome (a recorded run: its metrics and requests)
    sim: object  # apcsim.run.SimOutcome
    plans: list  # the engine's plan of every step (engine.recorded.plan_key); a replay: the simulator's


def load_cost(cfg: ValidateConfig):
    """The calibrated cost model of the profile that the config names, costing decode batches
    above the engine's largest graph bucket per op, as the engine runs them eagerly."""
    from apcsim.calibration.cost_model import CalibratedCostModel
    from apcsim.calibration.report import load_profile_for

    if cfg.cost_model != "calibrated":
        raise ConfigError(f"validation compares against a profile: cost_model must be calibrated, got {cfg.cost_model!r}")
    prof = load_profile_for(cfg.hardware, cfg.model, cfg.profile)
    try:
        return CalibratedCostModel(prof, cfg.model, decode_graph_max_batch=cfg.cuda_graph_max_batch), prof.path
    except ValueError as e:
        raise ConfigError(f"calibration profile {prof.path}: {e}") from None


def check_decode_graphs_match(cfg: ValidateConfig, cost, profile: str) -> None:
    """The simulator costs a pure-decode step whole when the profile has `decode_step` rows (the
    engine replayed it from its decode graphs) and per op otherwise: the engine must run decode
    steps the way its profile measured them."""
    from engine.config import decode_graph_mode, resolve_device, resolve_ops

    device = resolve_device(cfg.device)
    mode = decode_graph_mode(cfg.cuda_graphs, device, resolve_ops(cfg.attention_backend, device).name,
                             cfg.cuda_graph_max_batch)
    whole = cost.decode_step is not None
    if whole != (mode is not None):
        raise ConfigError(
            f"profile {profile} times decode steps {'whole (decode graphs on)' if whole else 'per op (decode graphs off)'}, "
            f"but the engine would run them {'through decode graphs' if mode else 'eagerly'} (cuda_graphs={cfg.cuda_graphs}); "
            "profile with the cuda_graphs= setting the engine runs with")


def run_validation(cfg: ValidateConfig) -> ValidationOutcome:
    from apcsim.run import simulate
    from engine.recorded import StepRecorder, step_cost_summary
    from engine.runner import run_engine

    cost, profile = load_cost(cfg)  # before the engine runs: a bad profile fails fast
    check_decode_graphs_match(cfg, cost, profile)
    engine_plans = StepRecorder()
    eng = run_engine(cfg, cost=cost, on_step=engine_plans)
    sim_cfg = copy.deepcopy(cfg)
    sim_cfg.num_gpu_blocks = eng.loop.executor.num_blocks
    sim_plans = StepRecorder()
    sim = simulate(sim_cfg, cost=cost, use_timestamps=cfg.online, keep_requests=True, on_step=sim_plans)
    comparison = compare_metrics(sim.metrics, eng.metrics)
    decisions = compare_decisions(eng.loop.requests, sim.simulation.requests, engine_plans.plans,
                                  None if cfg.skip_quiet else sim_plans.plans)
    info = validation_info(cfg, eng.metrics["config"], cost, profile, comparison, decisions,
                           engine_wall_s=eng.wall_s, sim_wall_s=sim.wall_s)
    info["step_costs"] = step_cost_summary(cost, engine_plans.plans, [d for _, d in eng.loop.step_times])
    return ValidationOutcome(comparison, info, eng, sim, engine_plans.plans)


def validation_info(cfg: ValidateConfig, c: dict, cost, profile: str, comparison: dict, decisions: dict, *,
                    engine_wall_s, sim_wall_s) -> dict:
    """validation_info.json: the run's config (`c`: the engine's metrics config), profile, wall
    times, decisions and how many metrics are within their goals."""
    return {
        "workload": c["workload"], "policy": c["policy"], "scheduler": c["scheduler"], "block_size": c["block_size"],
        "num_gpu_blocks": c["num_gpu_blocks"], "hardware": cfg.hardware.name, "model": cfg.model.name,
        "device": c["device"], "dtype": c["dtype"], "attention_backend": c["attention_backend"],
        "cuda_graphs": c["cuda_graphs"], "online": cfg.online, "seed": cfg.seed, "profile": profile, "cost_model": cost.name,
        "engine_wall_s": engine_wall_s, "sim_wall_s": sim_wall_s,
        "decisions": decisions,
        "within_goal": sum(1 for v in comparison.values() if v["within_goal"]),
        "metrics_with_goal": sum(1 for v in comparison.values() if v["within_goal"] is not None),
    }


def write_validation(out: ValidationOutcome, run_dir: Path, cfg: ValidateConfig, overrides: list[str] | None = None,
                     *, recorded: bool = False) -> None:
    """The run directory's files (module doc); with `cfg.record`, the bundle too (its overrides:
    `overrides`, those the run was composed from). `recorded`: `out` is a replay, whose engine
    side is in its bundle: no engine/ folder."""
    from apcsim.outputs.files import write_outputs
    from apcsim.outputs.metrics import _clean
    from engine.runner import write_engine_outputs
    from engine.validation_report import write_validation_html

    run_dir.mkdir(parents=True, exist_ok=True)
    if not recorded:
        write_engine_outputs(out.engine, run_dir / "engine", cfg)
        if cfg.record:
            from engine.recorded import write_bundle

            write_bundle(Path(cfg.record), out, cfg, overrides or [])
    write_outputs(out.sim, run_dir / "sim", cfg)
    (run_dir / "validation.json").write_text(json.dumps(_clean(out.comparison), indent=2) + "\n")
    (run_dir / "validation_info.json").write_text(json.dumps(_clean(out.info), indent=2) + "\n")
    write_validation_html(run_dir / "validation.html", out, include_plotlyjs=cfg.report.plotlyjs)


def format_step_costs(costs: dict) -> str:
    """One line per kind of step: the cost model's seconds for the engine's plans against the
    engine's measured seconds."""
    lines = []
    for kind, v in costs.items():
        if not v["steps"]:
            continue
        e = v["step_error_pct"]
        lines.append(f"{kind + ' steps':<14} {v['steps']:>7}: predicted {v['predicted_s']:.4g} s vs measured "
                     f"{v['measured_s']:.4g} s ({v['error_pct']:+.1f} %); per step p10/p50/p90 "
                     f"{e['p10']:+.1f}/{e['p50']:+.1f}/{e['p90']:+.1f} %")
    return "\n".join(lines)


def check_replay_overrides(overrides: list[str]) -> None:
    """A replay runs the recorded config: only `recorded=`, `profile=` (a cost model to check
    against the recording) and Hydra's own keys may be given."""
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key not in ("recorded", "profile") and not key.startswith("hydra."):
            raise ConfigError(f"recorded= replays the recorded run's config; {o!r} cannot be combined with it "
                              "(only profile= and hydra.* can)")


def format_table(comparison: dict) -> str:
    def f(x):
        if x is None:
            return "n/a"
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = [f"{'metric':<30} {'sim':>12} {'engine':>12} {'error %':>9}  goal"]
    for name, v in comparison.items():
        err = "n/a" if v["error_pct"] is None else f"{v['error_pct']:+.2f}"
        ok = {True: "ok", False: "MISS", None: "-"}[v["within_goal"]]
        lines.append(f"{name:<30} {f(v['sim']):>12} {f(v['engine']):>12} {err:>9}  {ok}")
    return "\n".join(lines)


register_validate_config()


@hydra.main(version_base=None, config_path="pkg://apcsim.conf", config_name="engine_validate")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: ValidateConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        overrides = list(HydraConfig.get().overrides.task)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if cfg.recorded:
            from engine.recorded import replay

            check_replay_overrides(overrides)
            out, cfg = replay(cfg.recorded, profile=cfg.profile)
            write_validation(out, run_dir, cfg, recorded=True)
        else:
            out = run_validation(cfg)
            write_validation(out, run_dir, cfg, overrides)
    except ApcsimError as e:
        exit_bad_input(PROG, str(e))
    d = out.info["decisions"]
    print(format_table(out.comparison))
    print(f"{out.info['within_goal']}/{out.info['metrics_with_goal']} metrics within the H100 goals; "
          f"{d['requests_differing']}/{d['requests_compared']} requests scheduled differently"
          + ("" if d["plans_identical"] is None else f"; plans identical: {d['plans_identical']}"))
    print(format_step_costs(out.info["step_costs"]))
    print(f"outputs in {run_dir}")


def entry() -> None:
    run_with_one_line_errors(main, PROG)


if __name__ == "__main__":
    entry()
