"""Whole-engine benchmark (GPU; ``--smoke`` checks every code path on the CPU in seconds).

Part ``decode``: one decode step against the memory roofline.
  Llama-3.1-8B architecture (model=llama3_8b), random weights, bf16 on CUDA, block 16. A StepPlan
  in which each of `batch` requests decodes one token with `context` tokens of KV (the new one
  included) goes through ``Executor.execute`` (input building, forward pass, greedy sampling,
  tokens back on the host), timed with perf_counter after a synchronize: warmup, then the
  median over iterations. Default cases: batch 64 and batch 1 at context 1,024, each run with
  the engine's decode graphs (`graph`: CUDA graphs, as the engine runs decode steps; `padded`
  in --smoke) and eagerly (`eager`), side by side in one run (--decode-modes).
  Roofline = (weight bytes + KV bytes read) / bandwidth, where
    weight bytes = every parameter once, except the embedding table, of which a step reads only
                   `batch` rows (the untied lm_head is read whole);
    KV bytes     = K and V of `context` tokens x batch x layers;
    bandwidth    = measured in the same run: device-to-device torch copy_ of a 1 GiB tensor,
                   counted as read + write bytes (also reported: the ratio at --nominal-tbps,
                   3.35 TB/s, the H100 SXM spec sheet).
  Goals (ratio = step time / roofline time at the measured bandwidth): <= 1.25 at batch 64,
  <= 1.3 at batch 1, both at context 1,024.

Part ``caching``: prefix caching's overhead and gain, end to end.
  ``engine.runner.run_engine`` on workload=shared_prefix (offline: every request at t=0),
  caching off (no policy) vs on (+policy=lru), same KV-cache size for every run (the one the
  warmup run derives, unless num_gpu_blocks is given). Output throughput = output tokens /
  duration (first arrival to last completion).
  - shared_fraction=0.0 (nothing to share): throughput on / off; goal: loss <= 1 %.
  - shared_fraction=0.25 (--shared-fraction): measured gain = throughput on / off - 1, against
    the ideal gain of skipping the cached tokens' prefill compute and nothing else. The ideal is
    measured on the caching-off run: the wall time of each step (the gap between consecutive step
    ends on the engine's clock, so scheduling and input building count; these gaps sum to the
    run's duration) is split between its prompt (prefill) tokens and its other tokens in
    proportion to their counts; the prefill share summed over the run / prompt tokens computed
    gives a cost per prefill token, and
        ideal duration = duration_off - cost per prefill token x skipped tokens,
        skipped tokens = prompt_tokens_computed (off) - prompt_tokens_computed (on),
        ideal gain     = duration_off / ideal duration - 1.
    Caveats: it prices every prompt token the same, although a skipped token sits early in its
    prompt and its own attention is cheaper than the average (later tokens still attend to its
    cached KV), so the ideal leans generous; and it assumes the schedule is otherwise unchanged.
    Goal: measured gain >= 90 % of ideal.
  --repeats N runs each off/on pair N times (alternating which goes first); medians reported.

Prints one JSON object at the end. With --out, the file is rewritten after every decode case and
every engine run (`"complete": false` until the end), so a run cut off by a time limit keeps what
it measured. The script only measures: it records no figures anywhere else.

Usage (GPU):  python bench/engine_step.py [--parts decode caching] [--batches 64 1] [--contexts 1024]
                  [--nominal-tbps 3.35] [--repeats 3] [--engine-overrides workload.num_requests=128]
                  [--out FILE.json]
Usage (CPU):  python bench/engine_step.py --smoke   # model=tiny, torch attention, tiny shapes
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

# Runnable as a plain script from anywhere: the repository root holds `engine` and `apcsim`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import torch

from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import Request, RequestSpec
from apcsim.mathutil import cdiv
from engine.config import compose_engine_config, resolve_ops
from engine.executor import Executor
from engine.runner import run_engine
from engine.weights import build_model, default_dtype

# Max step time / roofline time at the measured copy bandwidth, per (batch, context).
DECODE_GOALS = {(64, 1024): 1.25, (1, 1024): 1.3}
MAX_CACHING_LOSS = 0.01  # throughput lost to caching when nothing is shared
MIN_GAIN_FRACTION = 0.90  # measured gain / ideal gain with sharing


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on, resolved from the command line (smoke or GPU defaults)."""

    smoke: bool
    device: str
    model: str
    attention_backend: str
    block_size: int
    batches: list[int]
    contexts: list[int]
    warmup: int
    iters: int
    copy_bytes: int
    nominal_tbps: float
    shared_fraction: float
    repeats: int
    decode_modes: list[str]  # "graph" / "padded" (engine.decode_graphs) or "eager"
    engine_overrides: list[str] = field(default_factory=list)  # for every caching run
    warmup_overrides: list[str] = field(default_factory=list)  # shrink the warmup run
    seed: int = 0


def settings_from_args(a: argparse.Namespace) -> Settings:
    if a.smoke:
        # Triton kernels, if asked for on the CPU, run in Triton's interpreter; it reads this when
        # triton is first imported, which the engine does lazily (in resolve_ops), after here.
        os.environ["TRITON_INTERPRET"] = "1"
        return Settings(
            smoke=True, device="cpu", model="tiny",
            # The reference kernels: Triton's interpreter would be slower and adds nothing here.
            attention_backend="torch" if a.attention_backend == "auto" else a.attention_backend,
            block_size=a.block_size, batches=a.batches or [1, 4], contexts=a.contexts or [1024],
            warmup=1, iters=3, copy_bytes=1 << 20, nominal_tbps=a.nominal_tbps,
            shared_fraction=a.shared_fraction, repeats=a.repeats,
            decode_modes=[m if m != "graph" else "padded" for m in a.decode_modes],  # no capture on a CPU
            # One thread: the tiny model's ops are far too small to split, and on a small shared
            # host intra-op threads cost milliseconds per op in hand-offs.
            engine_overrides=["cpu_threads=1", "workload.num_requests=8", "workload.input_tokens=64",
                              "workload.output_tokens=16", *a.engine_overrides],
            warmup_overrides=["workload.num_requests=2", "workload.output_tokens=4"], seed=a.seed,
        )
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU (or pass --smoke)")
    return Settings(
        smoke=False, device="cuda", model=a.model, attention_backend=a.attention_backend,
        block_size=a.block_size, batches=a.batches or [64, 1], contexts=a.contexts or [1024],
        warmup=a.warmup, iters=a.iters, copy_bytes=a.copy_gib << 30, nominal_tbps=a.nominal_tbps,
        shared_fraction=a.shared_fraction, repeats=a.repeats, decode_modes=list(a.decode_modes),
        engine_overrides=list(a.engine_overrides),
        # Full-length prompts (the same kernel specialisations as the measured runs), few requests.
        warmup_overrides=["workload.num_requests=4", "workload.output_tokens=64"], seed=a.seed,
    )


# -- timing ------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median wall seconds of fn() over `iters` calls after `warmup`, the device idle at each start
    and drained at each end (so host work inside fn, such as input building, counts)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def release_memory(device: torch.device) -> None:
    """Collect what the last case left (reference cycles included) and hand cached CUDA blocks
    back, so that the next case sees the same free memory (the engine sizes its KV cache on it)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: torch.device, nbytes: int, warmup: int, iters: int) -> dict:
    """Device-to-device copy of an nbytes tensor; bandwidth counts read + write bytes."""
    src = torch.ones(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), device, warmup, iters)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes": nbytes, "time_s": t, "tb_per_s": moved / t / 1e12}


# -- part 1: a decode step against the roofline ---------------------------------------------------
def weight_bytes_read(model, batch: int) -> int:
    """Parameter bytes one decode step of `batch` tokens must read: all of them once, except the
    embedding table (only `batch` rows are gathered) unless it is tied to the lm_head."""
    embed = model.model.embed_tokens.weight
    seen, total = set(), 0
    for p in model.parameters():  # parameters() yields a tied weight once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    if not model.cfg.tie_embeddings:
        rows = min(batch, embed.shape[0])
        total -= (embed.shape[0] - rows) * embed.shape[1] * embed.element_size()
    return total


def kv_bytes_read(model_cfg, batch: int, context: int, dtype: torch.dtype) -> int:
    """K and V of `context` tokens per sequence, every layer."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model_cfg.num_layers * batch * context * model_cfg.num_kv_heads * model_cfg.head_dim * elem


def decode_plan(executor: Executor, batch: int, context: int, rng: np.random.Generator) -> StepPlan:
    """A StepPlan in which each of `batch` requests computes one token at position context-1 over
    context-1 cached tokens: the shapes of a decode step (new tokens [batch], seq_lens [batch] =
    context, block tables [batch, ceil(context / block_size)]).

    Each request's prompt is `context` random tokens and the chunk computes the last one, which
    costs exactly what decoding the context-th token costs and needs no generated token to read.
    Re-executing the plan rewrites the same KV slot and output slot, so every call is the same step.
    Block ids are a random permutation of the cache: scattered, as in a pool after some churn.
    """
    blocks_per_seq = cdiv(context, executor.block_size)
    tables = rng.permutation(executor.num_blocks)[: batch * blocks_per_seq].reshape(batch, blocks_per_seq)
    chunks = []
    for i in range(batch):
        spec = RequestSpec(request_id=f"decode-{i}",
                           prompt_token_ids=rng.integers(0, executor.model.cfg.vocab_size, context, dtype=np.int32),
                           output_len=1)
        req = Request(spec=spec, index=i)
        executor.register(req)
        chunks.append(ScheduledChunk(request_id=req.request_id, num_new_tokens=1, num_context_tokens=context - 1,
                                     block_ids=tuple(int(b) for b in tables[i]), samples=True))
    return StepPlan(step=0, chunks=chunks)


def time_decode_step(model, ops, settings: Settings, device, batch: int, context: int,
                     mode: str) -> tuple[float, float]:
    """(median seconds of Executor.execute, of its input building alone) for one decode step,
    through the decode graphs (`mode` graph/padded) or eagerly. The executor, its KV cache and
    its graphs live only in here, so they are freed on return."""
    blocks_per_seq = cdiv(context, settings.block_size)
    executor = Executor(model, ops, num_blocks=batch * blocks_per_seq, block_size=settings.block_size)
    if mode != "eager":
        executor.enable_decode_graphs(mode, max_batch=batch, max_blocks_per_seq=blocks_per_seq)
    # Random KV rather than the executor's zeros: no data-dependent fast path can flatter the step.
    executor.k_caches.normal_()
    executor.v_caches.normal_()
    plan = decode_plan(executor, batch, context, np.random.default_rng(settings.seed))
    step_s = median_seconds(lambda: executor.execute(plan), device, settings.warmup, settings.iters)
    prepare_s = median_seconds(lambda: executor.prepare(plan), device, settings.warmup, settings.iters)
    if mode != "eager" and executor.decode_graphs.replays == 0:
        raise RuntimeError(f"decode mode {mode}: the step did not go through the decode graphs")
    return step_s, prepare_s


def decode_case(model, ops, settings: Settings, device, batch: int, context: int, copy_tb_per_s: float,
                mode: str) -> dict:
    step_s, prepare_s = time_decode_step(model, ops, settings, device, batch, context, mode)
    release_memory(device)
    weights = weight_bytes_read(model, batch)
    kv = kv_bytes_read(model.cfg, batch, context, model.lm_head.weight.dtype)
    roofline_s = (weights + kv) / (copy_tb_per_s * 1e12)
    nominal_s = (weights + kv) / (settings.nominal_tbps * 1e12)
    goal = DECODE_GOALS.get((batch, context))
    return {
        "batch": batch, "context": context, "mode": mode,
        "step_s": step_s,
        "prepare_s": prepare_s,  # host-side input building, part of step_s (diagnostic)
        "weight_bytes": weights, "kv_bytes": kv,
        "roofline_s": roofline_s, "ratio": step_s / roofline_s,
        "roofline_nominal_s": nominal_s, "ratio_vs_nominal": step_s / nominal_s,
        "goal_max_ratio": goal, "goal_met": None if goal is None else step_s / roofline_s <= goal,
    }


def bench_decode(settings: Settings, emit=lambda part: None) -> dict:
    """The decode part; `emit` gets the part as it stands after the bandwidth probe and each case."""
    cfg = compose_engine_config([f"model={settings.model}", f"device={settings.device}",
                                 f"attention_backend={settings.attention_backend}"])
    device = torch.device(settings.device)
    if settings.smoke:
        torch.set_num_threads(1)  # as cpu_threads=1 in the smoke engine runs
    dtype = default_dtype(device)
    ops = resolve_ops(settings.attention_backend, device)
    copy = copy_bandwidth(device, settings.copy_bytes, settings.warmup, settings.iters)
    release_memory(device)  # the probe's 2 GiB
    model = build_model(cfg.model, seed=settings.seed, device=device, dtype=dtype)
    part = {
        "model": settings.model, "dtype": str(dtype).removeprefix("torch."), "attention_backend": ops.name,
        "block_size": settings.block_size, "warmup": settings.warmup, "iters": settings.iters,
        "copy": copy, "nominal_tbps": settings.nominal_tbps, "cases": [],
    }
    emit(part)
    for b in settings.batches:
        for c in settings.contexts:
            for mode in settings.decode_modes:
                part["cases"].append(decode_case(model, ops, settings, device, b, c, copy["tb_per_s"], mode))
                emit(part)
    del model
    release_memory(device)
    return part


# -- part 2: prefix caching end to end -------------------------------------------------------------
class StepRecorder:
    """on_step callback: per step, the tokens it ran and the (request, first position, count) of
    its listed chunks. Cohort decodes are left out: they never hold prompt tokens."""

    def __init__(self) -> None:
        self.num_tokens: list[int] = []
        self.chunks: list[list[tuple[str, int, int]]] = []

    def __call__(self, plan: StepPlan, result) -> None:
        self.num_tokens.append(plan.num_tokens)
        self.chunks.append([(c.request_id, c.num_context_tokens, c.num_new_tokens) for c in plan.chunks])


def prefill_attribution(recorder: StepRecorder, step_ends: list[float], prompt_lens: dict[str, int]) -> dict:
    """Prompt tokens computed and the step time attributed to them, proportionally to tokens.

    step_ends: each step's end on the engine clock (its timeline), which starts at 0 with the run;
    the gaps between them are the steps' wall times, host work included.
    """
    if len(step_ends) != len(recorder.num_tokens):
        raise RuntimeError("the timeline should hold one row per engine step")
    gaps = np.diff(np.asarray([0.0, *step_ends]))
    tokens, seconds = 0, 0.0
    for gap, total, chunks in zip(gaps.tolist(), recorder.num_tokens, recorder.chunks):
        prompt = sum(max(0, min(start + n, prompt_lens[rid]) - start) for rid, start, n in chunks)
        tokens += prompt
        seconds += gap * prompt / total
    return {"tokens": tokens, "attributed_s": seconds, "steps_wall_s": float(gaps.sum())}


def serving_run(settings: Settings, overrides: list[str]) -> dict:
    """One engine run; returns plain numbers only, so the model and KV cache can be freed."""
    cfg = compose_engine_config(overrides)
    recorder = StepRecorder()
    out = run_engine(cfg, on_step=recorder)
    m = out.metrics
    prompt_lens = {r.request_id: r.prompt_len for r in out.loop.requests}
    prefill = prefill_attribution(recorder, out.collector.timeline.time, prompt_lens)
    return {
        "policy": m["config"]["policy"], "num_gpu_blocks": m["config"]["num_gpu_blocks"],
        "duration_s": m["duration_s"], "output_tokens": m["output_tokens"],
        "output_throughput_tok_s": m["output_throughput_tok_s"],
        "prompt_tokens": m["prompt_tokens"], "prompt_tokens_computed": m["prompt_tokens_computed"],
        "prefix_cache_hit_rate": m["prefix_cache_hit_rate"], "num_preemptions": m["num_preemptions"],
        "num_steps": m["num_steps"], "prefill": prefill, "wall_s": out.wall_s,
    }


def serving_overrides(settings: Settings, shared_fraction: float, caching: bool, extra: list[str]) -> list[str]:
    base = [f"model={settings.model}", f"device={settings.device}",
            f"attention_backend={settings.attention_backend}", f"block_size={settings.block_size}",
            f"seed={settings.seed}", "report.enabled=false", "workload=shared_prefix",
            f"workload.shared_fraction={shared_fraction}"]
    return [*base, *(["+policy=lru"] if caching else []), *settings.engine_overrides, *extra]


def off_on_pairs(settings: Settings, shared_fraction: float, pinned: list[str], emit=lambda runs: None) -> dict:
    """`repeats` runs each with caching off and on; the order alternates so that drift (clocks,
    allocator state) does not always favour the same side. `emit` gets the runs after each."""
    runs = {"off": [], "on": []}
    device = torch.device(settings.device)
    for i in range(settings.repeats):
        for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
            runs[side].append(serving_run(settings, serving_overrides(settings, shared_fraction, side == "on", pinned)))
            release_memory(device)
            emit(runs)
    return runs


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def throughput_ratio(runs: dict) -> float:
    """Median output throughput with caching on / off."""
    return median_of(runs["on"], "output_throughput_tok_s") / median_of(runs["off"], "output_throughput_tok_s")


def ideal_duration(off_run: dict, skipped_tokens: int) -> float:
    """The caching-off duration less the skipped tokens' share of the measured prefill time."""
    pre = off_run["prefill"]
    per_token = pre["attributed_s"] / pre["tokens"] if pre["tokens"] else 0.0
    return off_run["duration_s"] - per_token * skipped_tokens


def caching_overhead(settings: Settings, pinned: list[str], emit=lambda runs: None) -> dict:
    runs = off_on_pairs(settings, 0.0, pinned, emit)
    ratio = throughput_ratio(runs)
    loss = 1.0 - ratio
    return {"shared_fraction": 0.0, "runs": runs, "throughput_ratio_on_off": ratio, "loss": loss,
            "goal_max_loss": MAX_CACHING_LOSS, "goal_met": loss <= MAX_CACHING_LOSS}


def caching_gain(settings: Settings, pinned: list[str], emit=lambda runs: None) -> dict:
    runs = off_on_pairs(settings, settings.shared_fraction, pinned, emit)
    measured = throughput_ratio(runs) - 1.0
    skipped = median_of(runs["off"], "prompt_tokens_computed") - median_of(runs["on"], "prompt_tokens_computed")
    ideal_s = statistics.median(ideal_duration(r, skipped) for r in runs["off"])
    ideal = median_of(runs["off"], "duration_s") / ideal_s - 1.0
    fraction = measured / ideal if ideal > 0 else None
    return {
        "shared_fraction": settings.shared_fraction, "runs": runs,
        "measured_gain": measured, "skipped_prompt_tokens": skipped,
        "ideal_duration_s": ideal_s, "ideal_gain": ideal, "gain_fraction_of_ideal": fraction,
        "goal_min_fraction": MIN_GAIN_FRACTION,
        "goal_met": None if fraction is None else fraction >= MIN_GAIN_FRACTION,
    }


def bench_caching(settings: Settings, emit=lambda part: None) -> dict:
    """The caching part; `emit` gets the part as it stands after each engine run (a case still
    running is under its key with its runs so far and `"complete": false`)."""
    # Warmup: compiles the kernels (prefill over a cached prefix included) before anything is
    # timed, and derives the KV-cache size every measured run then uses.
    warm = serving_run(settings, serving_overrides(settings, settings.shared_fraction, True, settings.warmup_overrides))
    release_memory(torch.device(settings.device))
    given = any(o.startswith("num_gpu_blocks=") for o in settings.engine_overrides)
    pinned = [] if given else [f"num_gpu_blocks={warm['num_gpu_blocks']}"]
    part = {
        "engine_overrides": settings.engine_overrides, "repeats": settings.repeats,
        "num_gpu_blocks": warm["num_gpu_blocks"] if not given else None,
    }
    for key, case in (("no_sharing", caching_overhead), ("sharing", caching_gain)):
        def partial(runs, key=key):
            part[key] = {"runs": runs, "complete": False}
            emit(part)

        part[key] = case(settings, pinned, partial)
        emit(part)
    return part


# -- main ----------------------------------------------------------------------------------------
def run_header(settings: Settings) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "bench": "engine_step",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "device": torch.cuda.get_device_name() if settings.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": triton_version, "smoke": settings.smoke,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, model=tiny, tiny shapes: checks the code paths")
    p.add_argument("--parts", nargs="+", default=["decode", "caching"], choices=["decode", "caching"])
    p.add_argument("--model", default="llama3_8b")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "triton", "torch"])
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decode batches (GPU default: 64 1)")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="decode contexts (default: 1024)")
    p.add_argument("--decode-modes", nargs="+", default=["graph", "eager"], choices=["graph", "padded", "eager"],
                   help="how decode steps run: engine decode graphs (graph = CUDA graphs) or eagerly")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--copy-gib", type=int, default=1, help="size of the bandwidth-probe copy")
    p.add_argument("--nominal-tbps", type=float, default=3.35, help="spec-sheet bandwidth, TB/s (H100 SXM)")
    p.add_argument("--shared-fraction", type=float, default=0.25, help="sharing of the gain case")
    p.add_argument("--repeats", type=int, default=1, help="off/on pairs per caching case")
    p.add_argument("--engine-overrides", nargs="*", default=[],
                   help="extra engine config overrides for every caching run, e.g. workload.num_requests=128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    return a


def write_json(path: str, result: dict) -> None:
    """Replace `path` with `result` in one rename: a reader (or a time limit) never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    a = parse_args(argv)
    settings = settings_from_args(a)
    result = run_header(settings)
    result["complete"] = False  # until every part has finished: --out is rewritten as results come

    def emit(key):
        def write(part):
            result[key] = part
            if a.out:
                write_json(a.out, result)
        return write

    if a.out:
        write_json(a.out, result)
    if "decode" in a.parts:
        emit("decode")(bench_decode(settings, emit("decode")))
    if "caching" in a.parts:
        emit("caching")(bench_caching(settings, emit("caching")))
    result["complete"] = True
    print(json.dumps(result, indent=2))
    if a.out:
        write_json(a.out, result)


if __name__ == "__main__":
    main()
