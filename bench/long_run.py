"""Long runs in bounded memory: wall time, CPU time and peak RSS of 100k- and 1M-request simulations.

Each case runs `apcsim.run.simulate` in a fresh subprocess (so the peak RSS is its own) with
requests.csv streamed to a temporary directory, as the CLI does, and report.html written from
the bounded columns. The workload is shared_prefix with short prompts (64 tokens, half shared,
32 output tokens) at Poisson arrivals of 120 req/s, which the server keeps up with (it serves
~140 req/s here), so the number of requests in flight stays bounded. The workload makes each
spec (and its prompt) when it falls due, so memory grows only with the per-request columns of
the request log, not with the workload or finished requests. Target: 1M requests under 1 GiB
peak RSS and under 5 minutes. CPU time (the child's own) is reported beside wall time, as a
shared machine stretches the wall clock.

Usage: python bench/long_run.py [--cases 100k 1m] [--out bench/results/long_run_cpu.json]
"""

from __future__ import annotations

import argparse

from _bench import describe_run, run_child, write_results

COMMON = ["+policy=lru", "block_size=16", "workload=shared_prefix", "workload.input_tokens=64",
          "workload.shared_fraction=0.5", "workload.output_tokens=32", "workload.arrival=poisson",
          "workload.request_rate=120", "report.plotlyjs=cdn"]
CASES = {
    "100k": COMMON + ["workload.num_requests=100000"],
    "1m": COMMON + ["workload.num_requests=1000000"],
}

CHILD = r"""
import gc, json, resource, sys, tempfile, time
from pathlib import Path
from apcsim.cli.compose import compose_config
from apcsim.outputs.files import write_outputs
from apcsim.run import simulate
cfg = compose_config(sys.argv[1:])
gc_time, gc_full, gc_t0 = [0.0], [0], [0.0]
def on_gc(phase, info):  # time in collections: full ones traverse every live object
    if phase == "start":
        gc_t0[0] = time.perf_counter()
    else:
        gc_time[0] += time.perf_counter() - gc_t0[0]
        gc_full[0] += info["generation"] == 2
gc.callbacks.append(on_gc)
t0 = time.perf_counter()
c0 = time.process_time()
with tempfile.TemporaryDirectory() as d:
    out = simulate(cfg, requests_csv=Path(d) / "requests.csv")
    sim_wall = time.perf_counter() - t0
    write_outputs(out, Path(d), cfg)
    rows = sum(1 for _ in open(Path(d) / "requests.csv")) - 1
    report_mib = (Path(d) / "report.html").stat().st_size / 2**20
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
m = out.metrics
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "simulate_wall_s": sim_wall, "requests": m["num_requests"],
                  "finished": m["num_finished"], "csv_rows": rows, "steps": m["num_steps"],
                  "hit_rate": m["prefix_cache_hit_rate"], "simulated_s": m["duration_s"],
                  "report_mib": report_mib, "gc_s": gc_time[0], "gc_full_collections": gc_full[0],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for name in args.cases:
        r = run_child(CHILD, CASES[name])
        r["overrides"] = CASES[name]
        r["under_1_gib"] = r["peak_rss_mib"] < 1024
        r["under_5_min"] = r["wall_s"] < 300
        results[name] = r
        print(f"{name}: {r['requests']} requests in {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} s CPU), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    write_results({**describe_run(" (the development VM; no GPU)"), "results": results}, args.out)


if __name__ == "__main__":
    main()
