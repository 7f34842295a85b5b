"""Recorded engine runs: an `engine.validate` run saved as a bundle that the simulator side can be
re-run against on any machine, without the engine or a GPU.

`python -m engine.validate ... record=DIR` writes the bundle; `python -m engine.validate
recorded=DIR [profile=CSV]` replays it: the simulator runs the recorded config (the same
overrides, composed again) with the engine's KV-cache size and the recorded profile (or
`profile=`, to check a new cost model against old measurements), and writes the same
validation.json / validation_info.json / validation.html as the live run, plus, per kind of
step, the cost model's time for each recorded plan against the engine's measured time.

A bundle is a directory of small files:

- `bundle.json`: format, the overrides and the resolved config, device and versions, the engine's
  block count, each request's id and outcome (cached tokens, preemptions, outputs, status), a
  digest of the request specs (replay rebuilds them from the config and checks it), the live
  run's comparison and info;
- `steps.jsonl.gz`: one JSON array per engine step: end time and measured seconds on the engine's
  clock, then the plan (step, cohort size and context, hashed tokens, chunks as [request index,
  new tokens, context tokens, samples], preempted request indexes);
- `metrics.json`, `requests.csv`: the engine's, as `python -m engine` writes them;
- `profile.csv` (+ `profile.meta.json`): the calibration profile the simulator used;
- `trace/<file>`: the trace, when the workload reads one from outside the package's traces.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import json
import platform
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import Status
from apcsim.errors import ConfigError

FORMAT = 1
BUNDLE_JSON = "bundle.json"
STEPS = "steps.jsonl.gz"
# Overrides a replay does not take from the recording: where the engine ran and what it wrote.
_NOT_REPLAYED = ("profile", "record", "recorded", "device", "cpu_threads", "attention_backend", "weights")


class StepRecorder:
    """The engine's on_step callback: every plan, as the key validation compares plans by."""

    def __init__(self) -> None:
        self.plans: list[tuple] = []

    def __call__(self, plan: StepPlan, _result) -> None:
        self.plans.append(plan_key(plan))


def plan_key(plan: StepPlan) -> tuple:
    """(step, chunks as (request id, new tokens, context tokens, samples), cohort size, cohort
    context, hashed tokens, preempted ids): what a step decided, block ids aside."""
    return (plan.step, tuple((c.request_id, c.num_new_tokens, c.num_context_tokens, bool(c.samples)) for c in plan.chunks),
            plan.num_cohort, plan.cohort_context_sum, plan.num_hashed_tokens, tuple(plan.preempted))


def plan_of_key(key: tuple) -> StepPlan:
    step, chunks, cohort, cohort_ctx, hashed, preempted = key
    return StepPlan(step=step, chunks=[ScheduledChunk(rid, n, ctx, (), s) for rid, n, ctx, s in chunks],
                    num_cohort=cohort, cohort_context_sum=cohort_ctx, num_hashed_tokens=hashed,
                    preempted=list(preempted))


def request_outcome(r) -> tuple:
    """What validation compares per request: (cached tokens, preemptions, outputs, status)."""
    return (r.num_cached_tokens, r.num_preemptions, r.num_output_tokens, r.status.value)


def specs_digest(requests) -> str:
    """sha256 of the request specs (ids, arrivals, token ids, lengths, follow-up links)."""
    h = hashlib.sha256()
    for r in requests:
        s = r.spec
        h.update(repr((s.request_id, float(s.arrival_time), s.output_len, s.priority, s.cache_salt, s.parent_id,
                       float(s.think_time_s), s.retention_priority, s.retention_duration_s)).encode())
        h.update(s.prompt_token_ids[:].astype("<i4").tobytes())
        if s.output_token_ids is not None:
            h.update(b"o" + s.output_token_ids.astype("<i4").tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- step costs
def step_kind(plan: StepPlan) -> str:
    """`decode` (every request computes one token), `prefill` (none does) or `mixed`."""
    decodes = plan.num_cohort + sum(1 for c in plan.chunks if c.num_new_tokens == 1)
    if decodes == plan.num_requests:
        return "decode"
    return "prefill" if decodes == 0 else "mixed"


def step_cost_summary(cost, plans: list[tuple], durations: list[float]) -> dict:
    """Per kind of step (and `all`): the measured seconds of the recorded steps against the cost
    model's seconds for the same plans; `error_pct` is of the sums, `step_error_pct` the
    percentiles of each step's (predicted - measured) / measured."""
    groups: dict[str, list[tuple[float, float]]] = {"decode": [], "prefill": [], "mixed": []}
    for key, measured in zip(plans, durations):
        plan = plan_of_key(key)
        groups[step_kind(plan)].append((cost.step_time(plan), measured))
    groups["all"] = [x for k in ("decode", "prefill", "mixed") for x in groups[k]]
    out = {}
    for kind, pairs in groups.items():
        if not pairs:
            out[kind] = {"steps": 0}
            continue
        pred = sum(p for p, _ in pairs)
        meas = sum(m for _, m in pairs)
        errs = sorted((p - m) / m * 100.0 for p, m in pairs if m > 0)
        q = (lambda f: errs[min(len(errs) - 1, int(f * len(errs)))]) if errs else (lambda f: None)
        out[kind] = {"steps": len(pairs), "measured_s": meas, "predicted_s": pred,
                     "error_pct": (pred - meas) / meas * 100.0 if meas > 0 else None,
                     "step_error_pct": {"p10": q(0.1), "p50": statistics.median(errs) if errs else None, "p90": q(0.9)}}
    return out


# ----------------------------------------------------------------------------------- writing
def _versions() -> dict:
    import numpy
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from engine.profile import _git_commit

    cuda = torch.cuda.is_available()
    return {"device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda if cuda else None,
            "numpy": numpy.__version__, "python": platform.python_version(), "git_commit": _git_commit()}


def _outside_package_trace(cfg) -> Path | None:
    """The workload's trace file when it is not one the package bundles (those travel with it)."""
    from apcsim.workloads.tracefile import BUNDLED_TRACES, resolve_trace_path

    path = getattr(cfg.workload, "path", None)
    if not path:
        return None
    p = resolve_trace_path(path).resolve()
    return None if p.is_relative_to(Path(BUNDLED_TRACES).resolve()) else p


def kept_overrides(overrides: list[str]) -> list[str]:
    """The overrides a replay composes again: not where the engine ran, nor Hydra's own."""
    return [o for o in overrides
            if o.lstrip("+~").split("=", 1)[0] not in _NOT_REPLAYED and not o.lstrip("+~").startswith("hydra.")]


def write_bundle(path: Path, out, cfg, overrides: list[str]) -> Path:
    """Save a finished validation run (`engine.validate.ValidationOutcome`) as a bundle."""
    from omegaconf import OmegaConf

    from apcsim.outputs.metrics import _clean
    from apcsim.outputs.requestlog import REQUEST_COLUMNS, request_row

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    eng = out.engine
    requests = eng.loop.requests
    ids = [r.request_id for r in requests]
    index = {rid: i for i, rid in enumerate(ids)}
    if len(out.plans) != len(eng.loop.step_times):
        raise RuntimeError(f"{len(out.plans)} recorded plans for {len(eng.loop.step_times)} engine steps")
    with gzip.open(path / STEPS, "wt") as f:
        for (end, dur), (step, chunks, cohort, cohort_ctx, hashed, preempted) in zip(eng.loop.step_times, out.plans):
            # Times as measured: json writes a float's shortest round-trip form, so a replay
            # reads back the live run's very numbers (rounding them made its error table drift).
            row = [end, dur, step, cohort, cohort_ctx, hashed,
                   [[index[rid], n, ctx, int(s)] for rid, n, ctx, s in chunks], [index[rid] for rid in preempted]]
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    with (path / "requests.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REQUEST_COLUMNS)
        w.writeheader()
        w.writerows(request_row(r) for r in requests)
    (path / "metrics.json").write_text(json.dumps(_clean(eng.metrics), indent=2) + "\n")
    profile = Path(out.info["profile"])
    shutil.copyfile(profile, path / "profile.csv")
    meta = profile.with_suffix(".meta.json")
    if meta.is_file():
        shutil.copyfile(meta, path / "profile.meta.json")
    trace = _outside_package_trace(cfg)
    if trace is not None:
        (path / "trace").mkdir(exist_ok=True)
        shutil.copyfile(trace, path / "trace" / trace.name)
    bundle = {
        "format": FORMAT,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "overrides": kept_overrides(overrides),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True),
        "versions": _versions(),
        "num_gpu_blocks": eng.loop.executor.num_blocks,
        "profile": {"file": "profile.csv", "source": str(profile),
                    "meta": "profile.meta.json" if meta.is_file() else None},
        "trace": None if trace is None else f"trace/{trace.name}",
        "specs_sha256": specs_digest(requests),
        "request_ids": ids,
        "request_outcomes": [list(request_outcome(r)) for r in requests],
        "validation": out.comparison,
        "info": out.info,
    }
    (path / BUNDLE_JSON).write_text(json.dumps(_clean(bundle), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------- reading
def read_steps(path: Path, ids: list[str]) -> tuple[list[tuple], list[tuple[float, float]]]:
    """(plan keys, (end, measured seconds)) of every recorded step."""
    plans, times = [], []
    with gzip.open(Path(path) / STEPS, "rt") as f:
        for line in f:
            end, dur, step, cohort, cohort_ctx, hashed, chunks, preempted = json.loads(line)
            plans.append((step, tuple((ids[i], n, ctx, bool(s)) for i, n, ctx, s in chunks), cohort, cohort_ctx, hashed,
                          tuple(ids[i] for i in preempted)))
            times.append((end, dur))
    return plans, times


def load_bundle(path) -> dict:
    path = Path(path)
    bj = path / BUNDLE_JSON
    if not bj.is_file():
        raise ConfigError(f"recorded={path}: not a recorded run (no {BUNDLE_JSON})")
    b = json.loads(bj.read_text())
    if b.get("format") != FORMAT:
        raise ConfigError(f"recorded={path}: bundle format {b.get('format')!r}, this version reads {FORMAT}")
    return b


def _leaves(d, prefix="") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_drift(recorded: dict, now: dict) -> tuple[list[str], list[str]]:
    """(keys whose value differs, keys only one side has) between the recorded config and the
    one composed again from its overrides, outside what a replay sets itself."""
    skip = ("profile", "record", "recorded", "num_gpu_blocks", "workload.path", *_NOT_REPLAYED)
    a = {k: v for k, v in _leaves(recorded).items() if not k.startswith(skip)}
    b = {k: v for k, v in _leaves(now).items() if not k.startswith(skip)}
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    return changed, sorted(a.keys() ^ b.keys())


def _engine_requests(path: Path) -> list:
    """Stand-ins for the engine's requests, from requests.csv, for the HTML report's scatter."""
    rows = []
    with (path / "requests.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            done = row["finish_s"] != ""
            rows.append(SimpleNamespace(
                request_id=row["request_id"], arrival_time=float(row["arrival_s"]),
                first_token_time=float(row["first_token_s"]) if done else None,
                finish_time=float(row["finish_s"]) if done else None,
                status=Status.FINISHED if done else Status.REJECTED))
    return rows


def replay(path, profile: str | None = None):
    """Re-run the simulator side of a recorded run; returns an `engine.validate.ValidationOutcome`
    whose `engine` holds the recorded side (metrics, requests stand-ins) and whose info has
    `step_costs` (see step_cost_summary) and the recording's device and versions."""
    import copy

    from omegaconf import OmegaConf

    from apcsim.cli.compose import compose_config
    from apcsim.run import simulate
    from engine.validate import (
        ValidationOutcome,
        compare_decisions_outcomes,
        compare_metrics,
        load_cost,
        register_validate_config,
        validation_info,
    )

    path = Path(path)
    b = load_bundle(path)
    prof = profile or str(path / b["profile"]["file"])
    overrides = [*b["overrides"], f"profile={prof}"]
    if b["trace"]:
        overrides.append(f"workload.path={path / b['trace']}")
    register_validate_config()
    cfg = compose_config(overrides, config_name="engine_validate")
    changed, only_one = config_drift(b["config"], OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))
    if changed:
        raise ConfigError(f"recorded={path}: the config composed from its overrides differs from the recorded one in "
                          f"{', '.join(changed[:5])}{'...' if len(changed) > 5 else ''}: defaults changed since it was recorded")
    cost, used_profile = load_cost(cfg)
    engine_cfg = b["info"]["cuda_graphs"]
    if (cost.decode_step is not None) != (engine_cfg != "off"):
        raise ConfigError(f"profile {used_profile} times decode steps {'whole' if cost.decode_step is not None else 'per op'}, "
                          f"but the recorded engine ran them {'eagerly' if engine_cfg == 'off' else 'through decode graphs'}")
    sim_cfg = copy.deepcopy(cfg)
    sim_cfg.num_gpu_blocks = b["num_gpu_blocks"]
    rec = StepRecorder()
    sim = simulate(sim_cfg, cost=cost, use_timestamps=cfg.online, keep_requests=True, on_step=rec)
    if specs_digest(sim.simulation.requests) != b["specs_sha256"]:
        raise ConfigError(f"recorded={path}: the workload built from the recorded config is not the recorded one "
                          "(its generator or trace changed since)")
    metrics = json.loads((path / "metrics.json").read_text())
    comparison = compare_metrics(sim.metrics, metrics)
    engine_plans, times = read_steps(path, b["request_ids"])
    outcomes = dict(zip(b["request_ids"], map(tuple, b["request_outcomes"])))
    decisions = compare_decisions_outcomes(outcomes, {r.request_id: request_outcome(r) for r in sim.simulation.requests},
                                           engine_plans, None if cfg.skip_quiet else rec.plans)
    info = validation_info(cfg, metrics["config"], cost, used_profile, comparison, decisions,
                           engine_wall_s=b["info"].get("engine_wall_s"), sim_wall_s=sim.wall_s)
    info["step_costs"] = step_cost_summary(cost, engine_plans, [d for _, d in times])
    info["recorded"] = {"bundle": str(path), "date_utc": b["date_utc"], "versions": b["versions"],
                        "profile": b["profile"]["source"], "config_keys_added_or_removed": only_one}
    engine = SimpleNamespace(metrics=metrics, loop=SimpleNamespace(requests=_engine_requests(path)))
    return ValidationOutcome(comparison, info, engine, sim, rec.plans), cfg
