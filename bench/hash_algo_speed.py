"""The cost of the block-key hash: simulator wall time with hash_algo = xxh3_64, xxh3_128, sha256
(and verify_tokens=true) on a realistic run, the first 1,000 requests of the Mooncake trace
(mean prompt ~15k tokens, so ~1,000 block keys per request at block_size=16). Results are
identical across hashes (the test suite checks that); only the time differs.

Usage: python bench/hash_algo_speed.py [--repeats 3] [--out bench/results/hash_algo_cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _bench import ROOT, describe_run, write_results

sys.path.insert(0, ROOT)

from apcsim.cli.compose import compose_config
from apcsim.run import simulate

BASE = ["workload=mooncake", "workload.num_requests=1000", "+policy=lru", "block_size=16", "report.enabled=false"]
VARIANTS = {"xxh3_64": [], "xxh3_128": ["hash_algo=xxh3_128"], "sha256": ["hash_algo=sha256"],
            "xxh3_64+verify_tokens": ["verify_tokens=true"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {k: [] for k in VARIANTS}
    hits = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
        for name, extra in VARIANTS.items():
            cfg = compose_config(BASE + extra)
            t0 = time.perf_counter()
            m = simulate(cfg).metrics
            walls[name].append(time.perf_counter() - t0)
            hits[name] = m["prefix_cache_hits"]
    med = {k: statistics.median(v) for k, v in walls.items()}
    write_results({
        **describe_run(" (the development VM; no GPU)"),
        "overrides": BASE,
        "median_wall_s": med,
        "walls_s": walls,
        "ratio_to_xxh3_64": {k: v / med["xxh3_64"] for k, v in med.items()},
        "prefix_cache_hits": hits,
    }, args.out)


if __name__ == "__main__":
    main()
