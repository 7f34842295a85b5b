"""Simulator speed: simulated requests per wall-clock second, and peak memory.

Each case runs in a fresh subprocess (so peak RSS is its own), `--repeats` times; the median is
reported. Cases:
  mooncake   the Mooncake FAST'25 synthetic trace (3,993 requests, mean prompt 15k tokens),
             +policy=lru block_size=16
  synth100k  100,000 requests of the shared_prefix workload (prompt 1,024 tokens, half shared,
             128 output tokens), Poisson arrivals at 40 req/s, +policy=lru block_size=16
Usage: python bench/sim_speed.py [--repeats 3] [--cases mooncake synth100k] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import statistics

from _bench import describe_run, run_child, write_results

CASES = {
    "mooncake": ["+policy=lru", "block_size=16", "workload=mooncake"],
    "synth100k": ["+policy=lru", "block_size=16", "workload=shared_prefix", "workload.num_requests=100000",
                  "workload.input_tokens=1024", "workload.shared_fraction=0.5", "workload.output_tokens=128",
                  "workload.arrival=poisson", "workload.request_rate=40"],
}

CHILD = r"""
import json, resource, sys, time
from apcsim.cli.compose import compose_config
from apcsim.run import simulate
cfg = compose_config(sys.argv[1:] + ["report.enabled=false"])
t0 = time.perf_counter()
out = simulate(cfg)
wall = time.perf_counter() - t0
m = out.metrics
print(json.dumps({"wall_s": wall, "requests": m["num_requests"], "steps": m["num_steps"],
                  "hit_rate": m["prefix_cache_hit_rate"], "preemptions": m["num_preemptions"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for name in args.cases:
        runs = [run_child(CHILD, CASES[name]) for _ in range(args.repeats)]
        wall = statistics.median(r["wall_s"] for r in runs)
        results[name] = {
            "overrides": CASES[name],
            "requests": runs[0]["requests"],
            "steps": runs[0]["steps"],
            "hit_rate": runs[0]["hit_rate"],
            "preemptions": runs[0]["preemptions"],
            "median_wall_s": wall,
            "requests_per_wall_s": runs[0]["requests"] / wall,
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "walls_s": [r["wall_s"] for r in runs],
        }
        r = results[name]
        print(f"{name:10s} {r['requests']:>7d} req  {r['median_wall_s']:7.2f} s  {r['requests_per_wall_s']:8.0f} req/s  "
              f"peak RSS {r['median_peak_rss_mib']:6.0f} MiB  hit rate {r['hit_rate']:.3f}  steps {r['steps']}")
    write_results({**describe_run(), "results": results}, args.out, echo=False)


if __name__ == "__main__":
    main()
