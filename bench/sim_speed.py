"""Simulator speed against a baseline commit and against a bare LRU floor, in CPU time.

Each case runs in a fresh interpreter, for this tree and for a baseline commit unpacked side by
side (`git archive` into a temp dir, run with PYTHONPATH there), interleaved (base, head, base,
head, ...) so that a busy machine slows both alike; medians of `--repeats` (>= 3) runs. Times are
CPU seconds of the child (`time.process_time` around the run), not wall time. Cases:

  azure      Azure LLM inference trace 2023, conversation (19,366 requests), +policy=lru block_size=16
  azure_nocache  the same with +policy=none (caching off): azure / azure_nocache is caching's cost at 0 hits
             (run with azure, the two take turns in one loop and the ratio is taken repeat by repeat)
  mooncake   the bundled Mooncake FAST'25 synthetic trace (3,993 requests), +policy=lru block_size=16
  synth100k  100,000 shared_prefix requests (1,024-token prompts, half shared, 128 output tokens),
             Poisson arrivals at 40 req/s, +policy=lru block_size=16
  startup    `python -m apcsim` of a 10-request run, the whole process (user + system CPU), apcsim's
             caches (fitted cost model, composed config, report layout and shell) warm, as for
             every job of a sweep after the first
  startup_cold  the same with an empty cache directory (APCSIM_CACHE_DIR) for every run: a
             first run
  startup_default  `startup` with no hydra.run.dir (the default, outputs/<date>/<time>-<pid>
             under the scratch working directory), as a user types the command

The floor (same run, same trace): a plain OrderedDict LRU over the prompt blocks of the requests
in arrival order, as large as the run's KV cache; no scheduler, no timing, no decode. Two key
kinds: xxh3_64 chained over each block's tokens (what apcsim hashes), and, for Mooncake-style
traces, (hash_id, sub-block) tuples that need no tokens at all. Workload building is outside
the floor's timed part, as it is outside the simulator's `simulate` only in part (the simulator
builds its workload inside the timed run), so the floor is a lower bound on any simulator of
the same trace.

Usage: python bench/sim_speed.py [--baseline REF] [--repeats 3] [--cases ...] [--quick] [--out FILE.json]
  --baseline  a commit/branch/tag; default: `git merge-base HEAD main` (the commit this branch
              started from). `--baseline none` runs this tree alone.
  --quick     1,000 Azure requests, 10,000 synthetic ones, repeats 3: for iterating.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _bench import ROOT, describe_run, write_results

AZURE = ["+policy=lru", "block_size=16", "workload=azure", "workload.path=azure_llm_2023/AzureLLMInferenceTrace_conv.csv"]
CASES = {
    "azure": AZURE,
    # The same run with prefix caching off (its hit rate is 0 anyway): azure / azure_nocache CPU
    # time is what prefix caching costs on a trace where it never hits.
    "azure_nocache": ["+policy=none", *AZURE[1:]],
    "mooncake": ["+policy=lru", "block_size=16", "workload=mooncake"],
    "synth100k": ["+policy=lru", "block_size=16", "workload=shared_prefix", "workload.num_requests=100000",
                  "workload.input_tokens=1024", "workload.shared_fraction=0.5", "workload.output_tokens=128",
                  "workload.arrival=poisson", "workload.request_rate=40"],
    "startup": ["+policy=lru", "block_size=16", "workload.num_requests=10"],
    "startup_cold": ["+policy=lru", "block_size=16", "workload.num_requests=10"],
    "startup_default": ["+policy=lru", "block_size=16", "workload.num_requests=10"],
}
QUICK = {"azure": ["workload.num_requests=1000"], "azure_nocache": ["workload.num_requests=1000"],
         "synth100k": ["workload.num_requests=10000"]}
FLOOR_CASES = ("azure", "mooncake", "synth100k")

# The simulator child: CPU time of `simulate` (workload building included), peak RSS.
SIM_CHILD = r"""
import json, resource, sys, time
from apcsim.cli.compose import compose_config
from apcsim.run import simulate
import apcsim
cfg = compose_config(sys.argv[1:] + ["report.enabled=false"])
c0, t0 = time.process_time(), time.perf_counter()
out = simulate(cfg)
cpu, wall = time.process_time() - c0, time.perf_counter() - t0
m = out.metrics
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "requests": m["num_requests"], "steps": m["num_steps"],
                  "hit_rate": m["prefix_cache_hit_rate"], "preemptions": m["num_preemptions"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "apcsim": apcsim.__file__}))
"""

# The floor child: an OrderedDict LRU replay of the prompt blocks, xxh3 keys and (if the trace
# has hash ids) (hash_id, sub-block) keys. Same pool size as the simulator's run.
FLOOR_CHILD = r"""
import json, sys, time
from collections import OrderedDict
import numpy as np, xxhash
from apcsim.cli.compose import compose_config
from apcsim.run import checked_config, num_blocks_for
from apcsim.workloads.base import build_workload

cfg = checked_config(compose_config(sys.argv[1:] + ["report.enabled=false"]))
bs = cfg.block_size
capacity = cfg.cache.usable_blocks(num_blocks_for(cfg))
workload_ss, _ = np.random.SeedSequence(cfg.seed).spawn(2)
specs = build_workload(cfg.workload, vocab_size=cfg.model.vocab_size, seed_seq=workload_ss)
specs.sort(key=lambda s: s.arrival_time)
# Every prompt's tokens, made before the timed part (a trace's prompts are lazy: apcsim.core.lazy_prompt)
prompts = [np.asarray(s.prompt_token_ids) for s in specs]

def replay(key_lists):
    lru, hits, total = OrderedDict(), 0, 0
    move, pop = lru.move_to_end, lru.popitem
    for keys in key_lists:
        for k in keys:
            if k in lru:
                move(k)
                hits += 1
            else:
                lru[k] = None
                if len(lru) > capacity:
                    pop(last=False)
        total += len(keys)
    return hits, total

def xxh3_keys():
    h = xxhash.xxh3_64_intdigest
    for p in prompts:
        data = memoryview(p.astype("<i4", copy=False).tobytes())
        step, seed, keys = bs * 4, 0, []
        for i in range(len(p) // bs):
            seed = h(data[i * step : (i + 1) * step], seed)
            keys.append(seed)
        yield keys

out = {"capacity": capacity}
c0 = time.process_time()
hits, total = replay(xxh3_keys())
out["xxh3"] = {"cpu_s": time.process_time() - c0, "hit_rate": hits / max(total, 1)}
if cfg.workload.name == "mooncake":
    from apcsim.workloads.mooncake import read_rows
    from apcsim.workloads.tracefile import resolve_trace_path
    w = cfg.workload
    sub = w.hash_block_size // bs  # engine blocks per hash id (bs divides it)
    rows = read_rows(resolve_trace_path(w.path), w.timestamp_unit, w.num_requests, w.strict_lengths)
    def id_keys():
        for r in rows:
            n = r.input_length // bs
            yield [(r.hash_ids[j // sub], j % sub) for j in range(n)]
    c0 = time.process_time()
    hits, total = replay(id_keys())
    out["ids"] = {"cpu_s": time.process_time() - c0, "hit_rate": hits / max(total, 1)}
print(json.dumps(out))
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def unpack(ref: str, into: str) -> str:
    """The tree of `ref`, unpacked under `into`; returns its full commit hash."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", into], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {commit} failed")
    return commit


def child(tree: str, code: str, args: list[str]) -> dict:
    """Run `code` in a new interpreter that imports apcsim from `tree`; its last line is JSON."""
    import json

    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"case failed in {tree}: {' '.join(args)}\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    where = out.get("apcsim")
    if where is not None and not os.path.realpath(where).startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"the child imported apcsim from {where}, not from {tree}")
    return out


def startup(tree: str, args: list[str], *, cold: bool = False, run_dir: bool = True) -> dict:
    """CPU seconds (user + system) of a whole `python -m apcsim` process run in a scratch dir;
    `cold`: with an empty cache directory of its own; `run_dir`: into hydra.run.dir=SCRATCH/out
    (else the default directory, under the scratch dir)."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONPATH": tree, **({"APCSIM_CACHE_DIR": f"{scratch}/cache"} if cold else {})}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "apcsim", *args, *([f"hydra.run.dir={scratch}/out"] if run_dir else [])],
                              capture_output=True, text=True, env=env, cwd=scratch)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"startup case failed in {tree}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # No peak RSS: RUSAGE_CHILDREN's ru_maxrss is the largest of all children so far, not this one's.
    return {"cpu_s": cpu, "wall_s": wall, "requests": 10, "peak_rss_mib": None}


def run_case(tree: str, name: str, args: list[str]) -> dict:
    if name.startswith("startup"):
        return startup(tree, args, cold=name == "startup_cold", run_dir=name != "startup_default")
    return child(tree, SIM_CHILD, args)


def spread(xs: list[float]) -> float:
    """(max - min) / median: how far apart the repeats are."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats must be >= 3 (medians of fewer say little)")
    base_ref = args.baseline or git("merge-base", "HEAD", "main")
    head = git("rev-parse", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    scratch = tempfile.mkdtemp(prefix="apcsim-base-")
    try:
        base = None if base_ref == "none" else unpack(base_ref, scratch)
        doc = {**describe_run(), "head": head, "baseline": base, "repeats": args.repeats, "quick": args.quick,
               "unit": "CPU seconds of the child (time.process_time around simulate; startup: the whole process)",
               "results": {}}
        # azure and azure_nocache take turns in one loop when both run, so that each repeat's
        # ratio of the two (caching's cost at zero hits) compares runs of the same moment.
        paired = {"azure", "azure_nocache"} <= set(args.cases)
        all_runs: dict[str, dict[str, list[dict]]] = {}
        for name in args.cases:
            if paired and name == "azure_nocache":
                continue  # run beside azure
            group = [name, "azure_nocache"] if paired and name == "azure" else [name]
            for n in group:
                all_runs[n] = {"head": [], "base": []}
                if n in ("startup", "startup_default"):  # one untimed run each: the OS file cache and apcsim's caches warm
                    for tree in ([scratch] if base is not None else []) + [ROOT]:
                        run_case(tree, n, case_args_of(n, args.quick))
            for _ in range(args.repeats):
                for n in group:
                    if base is not None:
                        all_runs[n]["base"].append(run_case(scratch, n, case_args_of(n, args.quick)))
                    all_runs[n]["head"].append(run_case(ROOT, n, case_args_of(n, args.quick)))
            for n in group:
                doc["results"][n] = case_result(n, all_runs[n], args)
        if paired:
            doc["caching_overhead_at_zero_hits"] = caching_overhead(all_runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(doc, args.out, echo=False)


def case_args_of(name: str, quick: bool) -> list[str]:
    return CASES[name] + (QUICK.get(name, []) if quick else [])


def case_result(name: str, runs: dict[str, list[dict]], args) -> dict:
    """One case's summary (with its floor where it has one), printed as it is made."""
    case_args = case_args_of(name, args.quick)
    r = summarise(runs, case_args)
    if name in FLOOR_CASES and not args.no_floor:
        floors = [child(ROOT, FLOOR_CHILD, case_args) for _ in range(args.repeats)]
        r["floor"] = {kind: {"median_cpu_s": statistics.median(f[kind]["cpu_s"] for f in floors),
                             "hit_rate": floors[0][kind]["hit_rate"],
                             "requests_per_cpu_s": r["requests"] / statistics.median(f[kind]["cpu_s"] for f in floors),
                             "head_vs_floor": statistics.median(f[kind]["cpu_s"] for f in floors) / r["head"]["median_cpu_s"]}
                      for kind in ("xxh3", "ids") if kind in floors[0]}
    print_case(name, r)
    return r


def caching_overhead(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """azure / azure_nocache CPU time, repeat by repeat (the two ran back to back), per side: the
    median ratio and its range, what prefix caching costs where it never hits (1.10 would be
    10 % more CPU than with caching off)."""
    out = {}
    for side in ("head", "base"):
        pairs = list(zip(runs["azure"][side], runs["azure_nocache"][side]))
        if pairs:
            ratios = [a["cpu_s"] / b["cpu_s"] for a, b in pairs]
            out[side] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print("caching overhead at 0 hits (azure / azure_nocache, paired repeats): "
          + "  ".join(f"{k} x{v['median']:.2f} [{v['min']:.2f}..{v['max']:.2f}]" for k, v in out.items()))
    return out


def summarise(runs: dict[str, list[dict]], case_args: list[str]) -> dict:
    out: dict = {"overrides": case_args, "requests": runs["head"][0]["requests"]}
    for side, rs in runs.items():
        if not rs:
            continue
        cpus = [x["cpu_s"] for x in rs]
        out[side] = {"median_cpu_s": statistics.median(cpus), "cpu_s": cpus, "spread": spread(cpus),
                     "requests_per_cpu_s": out["requests"] / statistics.median(cpus),
                     "median_peak_rss_mib": None if rs[0]["peak_rss_mib"] is None
                     else statistics.median(x["peak_rss_mib"] for x in rs)}
        for k in ("steps", "hit_rate", "preemptions"):
            if k in rs[0]:
                out[side][k] = rs[0][k]
    if runs["base"]:
        ratios = [b["cpu_s"] / h["cpu_s"] for b, h in zip(runs["base"], runs["head"])]
        out["speedup"] = {"median_of_medians": out["base"]["median_cpu_s"] / out["head"]["median_cpu_s"],
                          "pairwise": ratios, "min": min(ratios), "max": max(ratios)}
        same = all(out["base"].get(k) == out["head"].get(k) for k in ("steps", "hit_rate", "preemptions"))
        out["same_decisions"] = same  # steps, hit rate and preemptions agree (a smoke check, not the proof)
    return out


def print_case(name: str, r: dict) -> None:
    h = r["head"]
    line = (f"{name:9s} {r['requests']:>7d} req  head {h['median_cpu_s']:7.2f} s CPU (spread {h['spread']:.0%})  "
            f"{h['requests_per_cpu_s']:8.0f} req/s  RSS {h['median_peak_rss_mib'] or float('nan'):5.0f} MiB")
    if "base" in r:
        s = r["speedup"]
        line += (f" | base {r['base']['median_cpu_s']:7.2f} s (spread {r['base']['spread']:.0%})  "
                 f"x{s['median_of_medians']:.2f} [{s['min']:.2f}..{s['max']:.2f}]  same={r['same_decisions']}")
    print(line)
    for kind, f in r.get("floor", {}).items():
        print(f"{'':9s} floor {kind:5s} {f['median_cpu_s']:7.2f} s CPU {f['requests_per_cpu_s']:8.0f} req/s  "
              f"hit {f['hit_rate']:.3f}  head/floor speed {f['head_vs_floor']:.2f}")


if __name__ == "__main__":
    main()
