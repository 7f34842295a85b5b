"""Run the policy zoo on every trace and write docs/policies.md (tables from docs/data/*.csv).

    python docs/build_policies.py            # runs every trace's sweep (mooncake and gmi: long)
    python docs/build_policies.py --traces multiturn,rag,shared_prefix   # a subset
    python docs/build_policies.py --reuse    # rebuild the page from docs/data/policy_zoo_*.csv
    python docs/build_policies.py --traces priority_classes   # only the priority-class sweep

For each trace, the cache sizes are 10 %, 25 % and 50 % of its working set: the number of
distinct prompt blocks (keys at block_size 16) over the whole (sub)trace, floored at four times
the largest request so that a few requests always fit. Each trace is one Hydra multirun of
`+experiment=policy_zoo` (13 policies x 3 sizes), collected into docs/data/policy_zoo_TRACE.csv;
the scheduler table is `+experiment=scheduler_zoo` at the middle size. `priority_classes` is the
`+experiment=priority_classes` sweep (scheduler=fcfs/priority x lru/priority_lru on two request
classes), collected into docs/data/priority_classes.csv.

The GMI/LMBench trace has no license: it is read from ../shared/traces (never copied here) and
only aggregate metrics are kept.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from apcsim.sweep.collect import collect, write_csv

DOCS = Path(__file__).resolve().parent
DATA = DOCS / "data"
GMI = (DOCS.parent / ".." / "shared" / "traces" / "gmi_lmbench" / "gmi_trace.jsonl").resolve()
BLOCK_SIZE = 16
FRACTIONS = (0.10, 0.25, 0.50)

# name -> (overrides, how it was scaled). Subsets keep a whole run of each to seconds.
TRACES = {
    "mooncake": (["workload=mooncake", "workload.time_scale=8"],
                 "Mooncake FAST'25 synthetic trace (bundled): all 3,993 requests, arrivals slowed 8x "
                 "(time_scale=8: 0.49 requests/s of 15.3K-token prompts, which one A100 keeps up with; at "
                 "the original rate it is overloaded many times over). Its reuse spans the whole trace: "
                 "an unbounded cache would hit 65 % of prompt blocks, the first 200 requests only 6 %"),
    "gmi": (["workload=mooncake", f"workload.path={GMI}", "workload.hash_block_size=32",
             "workload.timestamp_unit=ns", "workload.strict_lengths=false", "workload.num_requests=1000",
             "workload.time_scale=0.01"],
            "GMI/LMBench trace (../shared, not bundled): first 1,000 requests, time compressed 100x "
            "(time_scale=0.01: the 24 h trace is sparse)"),
    "multiturn": (["workload=multiturn"], "multiturn workload, defaults"),
    "rag": (["workload=rag"], "rag workload, defaults"),
    "shared_prefix": (["workload=shared_prefix"], "shared_prefix workload, defaults"),
}
SCHED_TRACES = ("rag", "multiturn")
PRIORITY = "priority_classes"  # not a trace: the preset pins its workload and cache
POLICIES = ["lru", "fifo", "lfu", "arc", "s3fifo", "sieve", "slru", "gdsf", "cost_aware", "leaf_lru",
            "priority_lru", "pinned_ttl", "belady"]


def working_set(overrides: list[str]) -> tuple[int, int]:
    """(distinct prompt blocks, blocks of the largest request) of the workload."""
    from apcsim.cli.compose import compose_config
    from apcsim.core.future import FutureOracle
    from apcsim.workloads import build_workload

    cfg = compose_config(overrides + [f"block_size={BLOCK_SIZE}"])
    specs = build_workload(cfg.workload, vocab_size=cfg.model.vocab_size,
                           seed_seq=np.random.SeedSequence(cfg.seed).spawn(2)[0])
    uses = FutureOracle(specs, BLOCK_SIZE)._uses
    largest = max(math.ceil((s.prompt_len + s.output_len) / BLOCK_SIZE) for s in specs)
    return len(uses), largest


def sizes_for(overrides: list[str]) -> list[int]:
    uniq, largest = working_set(overrides)
    return [max(int(f * uniq), 4 * largest) for f in FRACTIONS]


def run(preset: str, overrides: list[str], out: Path) -> None:
    cmd = [sys.executable, "-m", "apcsim", f"+experiment={preset}", f"block_size={BLOCK_SIZE}", *overrides,
           f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def sweep_all(names: list[str]) -> None:
    DATA.mkdir(exist_ok=True)
    jobs = [(PRIORITY, PRIORITY, [])] if PRIORITY in names else []
    for name in (n for n in names if n != PRIORITY):
        ov = TRACES[name][0]
        sizes = sizes_for(ov)
        jobs.append((f"policy_zoo_{name}", "policy_zoo", ov + [f"num_gpu_blocks={','.join(map(str, sizes))}"]))
        if name in SCHED_TRACES:
            jobs.append((f"scheduler_zoo_{name}", "scheduler_zoo", ov + [f"num_gpu_blocks={sizes[1]}"]))
    with tempfile.TemporaryDirectory() as tmp:
        def one(job):
            csv_name, preset, ov = job
            out = Path(tmp) / csv_name
            run(preset, ov, out)
            rows = collect(out)
            for r in rows:
                r.pop("workload.path", None)  # a local path, not a result
            write_csv(rows, DATA / f"{csv_name}.csv")
            print(f"{csv_name}: {len(rows)} runs", flush=True)

        with ThreadPoolExecutor(max_workers=2) as pool:  # the dev VM has 2 cores
            list(pool.map(one, jobs))


def load(name: str) -> list[dict]:
    with open(DATA / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def f3(x) -> str:
    return "n/a" if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def policy_section(name: str, how: str) -> tuple[str, dict]:
    rows = load(f"policy_zoo_{name}")
    sizes = sorted({int(r["num_gpu_blocks"]) for r in rows})
    out = [f"### {name}", "", how + ".", ""]
    winners = {}
    for frac, size in zip(FRACTIONS, sizes):
        at = {r["policy"]: r for r in rows if int(r["num_gpu_blocks"]) == size}
        bound = at["belady"]["prefix_cache_hit_rate"]
        body = []
        for p in sorted(at, key=lambda p: -at[p]["prefix_cache_hit_rate"]):
            r = at[p]
            body.append([p, f3(r["prefix_cache_hit_rate"]), f"{100 * (r['prefix_cache_hit_rate'] - bound):+.1f}",
                         f3(r["ttft_s_p50"]), f3(r["ttft_s_p99"]), f"{r['output_throughput_tok_s']:.0f}",
                         int(r["num_preemptions"])])
        online = [p for p in at if p != "belady"]
        best = max(online, key=lambda p: (at[p]["prefix_cache_hit_rate"], -at[p]["ttft_s_p50"]))
        winners[size] = (best, at[best]["prefix_cache_hit_rate"], at["lru"]["prefix_cache_hit_rate"], bound)
        out += [f"Cache {size} blocks ({int(frac * 100)} % of the working set, or 4x the largest request):", "",
                table(["policy", "hit rate", "gap to belady (pts)", "TTFT p50 (s)", "TTFT p99 (s)",
                       "output tok/s", "preemptions"], body), ""]
    return "\n".join(out), {"sizes": sizes, "winners": winners}


def sched_section(name: str) -> str:
    rows = load(f"scheduler_zoo_{name}")
    body = [[r["scheduler"], f3(r["prefix_cache_hit_rate"]), f3(r["ttft_s_p50"]), f3(r["ttft_s_p99"]),
             f3(r["e2e_s_p99"]), f"{r['output_throughput_tok_s']:.0f}", int(r["num_preemptions"])] for r in rows]
    return "\n".join([f"#### {name} (LRU, {int(rows[0]['num_gpu_blocks'])} blocks)", "",
                      table(["scheduler", "hit rate", "TTFT p50 (s)", "TTFT p99 (s)", "E2E p99 (s)", "output tok/s",
                             "preemptions"], body), ""])


def priority_section() -> str:
    """The priority-class sweep: each (scheduler, policy) with both classes' latencies and hits."""
    rows = load(PRIORITY)
    classes = ("interactive", "batch")
    body = []
    at = {}
    for r in rows:
        at[(r["scheduler"], r["policy"])] = r
        cells = [r["scheduler"], r["policy"], f3(r["prefix_cache_hit_rate"]), int(r["num_preemptions"])]
        for c in classes:
            p = f"by_priority_class_{c}_"
            cells += [f3(r[p + "ttft_s_p50"]), f3(r[p + "ttft_s_p99"]), f3(r[p + "e2e_s_p99"]),
                      f3(r[p + "cached_token_fraction"])]
        body.append(cells)
    head = ["scheduler", "eviction", "hit rate", "preemptions"]
    for c in classes:
        head += [f"{c} TTFT p50 (s)", f"{c} TTFT p99 (s)", f"{c} E2E p99 (s)", f"{c} cached"]

    def v(sched, pol, c, key):
        return at[(sched, pol)][f"by_priority_class_{c}_{key}"]

    said = [
        f"- `scheduler=priority` against `fcfs` (both with LRU): interactive TTFT p99 "
        f"{f3(v('fcfs', 'lru', 'interactive', 'ttft_s_p99'))} s -> {f3(v('priority', 'lru', 'interactive', 'ttft_s_p99'))} s, "
        f"batch TTFT p99 {f3(v('fcfs', 'lru', 'batch', 'ttft_s_p99'))} s -> {f3(v('priority', 'lru', 'batch', 'ttft_s_p99'))} s. "
        "Interactive requests jump the waiting queue and are preempted last (vLLM's priority policy); "
        "batch requests pay for it.",
        f"- `priority_lru` against `lru` (both FCFS): the interactive share of prompt tokens found in the cache "
        f"{f3(v('fcfs', 'lru', 'interactive', 'cached_token_fraction'))} -> "
        f"{f3(v('fcfs', 'priority_lru', 'interactive', 'cached_token_fraction'))}, batch "
        f"{f3(v('fcfs', 'lru', 'batch', 'cached_token_fraction'))} -> "
        f"{f3(v('fcfs', 'priority_lru', 'batch', 'cached_token_fraction'))}. Interactive conversations' blocks "
        "(retention 80 for 30 s) outlast the batch ones (35) over the think time between turns, so more of an "
        "interactive history is still cached when the next turn arrives; LRU treats both alike.",
    ]
    return "\n".join([
        "## Priority classes: scheduler=priority and priority_lru", "",
        "`python -m apcsim +experiment=priority_classes` (conf/experiment/priority_classes.yaml): the multiturn "
        "workload, 128 conversations of 4 turns starting at 4 per second (Poisson), 2,000 blocks of 16 tokens. "
        "A conversation is `interactive` (share 0.25: vLLM priority 0, KV retention priority 80 for 30 s) or "
        "`batch` (share 0.75: priority 1, priority_lru's default retention 35), drawn per conversation; the "
        "system prompt every conversation shares is retained at 90. Per-class columns come from metrics.json's "
        "`by_priority_class`; `cached` is the fraction of the class's prompt tokens that hit at first admission.",
        "", table(head, body), "", "What changes:", "", *said, "",
    ])


def build_page() -> str:
    parts = [
        "# Policy zoo: eviction and scheduling policies compared",
        "",
        "Generated by `python docs/build_policies.py` (`--reuse` rebuilds from docs/data/). Simulated "
        f"A100 + Llama-3-8B (calibrated cost model), block_size {BLOCK_SIZE}, FCFS unless said, seed 0; "
        f"built {datetime.date.today()} on a 2-CPU dev VM ({platform.machine()}, Python {platform.python_version()}), "
        "no GPU. Each trace's three cache sizes are 10 %, 25 % and 50 % of its working set (distinct prompt "
        "blocks over the subtrace), floored at 4x the largest request. `gap to belady` is hit rate minus "
        "belady's, in percentage points (positive: the policy beat the offline bound, which is possible, see "
        "below). The sweep: `python -m apcsim +experiment=policy_zoo workload=... num_gpu_blocks=a,b,c`.",
        "",
        (DOCS / "policies_discussion.md").read_text() if (DOCS / "policies_discussion.md").is_file() else "",
        "",
        "## Eviction policies, per trace",
        "",
    ]
    summary = []
    for name, (_, how) in TRACES.items():
        if not (DATA / f"policy_zoo_{name}.csv").is_file():
            continue
        text, info = policy_section(name, how)
        parts += [text, ""]
        for size, (best, hr, lru, bound) in info["winners"].items():
            summary.append([name, size, best, f3(hr), f3(lru), f3(bound)])
    parts[parts.index("## Eviction policies, per trace"):parts.index("## Eviction policies, per trace")] = [
        "## Best online policy per trace and cache size", "",
        table(["trace", "cache blocks", "best online policy", "its hit rate", "lru", "belady"], summary), ""]
    parts += ["## Scheduling policies", ""]
    for name in SCHED_TRACES:
        if (DATA / f"scheduler_zoo_{name}.csv").is_file():
            parts.append(sched_section(name))
    if (DATA / f"{PRIORITY}.csv").is_file():
        parts.append(priority_section())
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse", action="store_true", help="rebuild the page from docs/data/ without running")
    known = [*TRACES, PRIORITY]
    ap.add_argument("--traces", default=",".join(known), help="comma-separated subset of: " + ", ".join(known))
    args = ap.parse_args()
    names = [t for t in args.traces.split(",") if t]
    unknown = [t for t in names if t not in known]
    if unknown:
        sys.exit(f"build_policies: unknown trace(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not args.reuse:
        if "gmi" in names and not GMI.is_file():
            sys.exit(f"build_policies: the GMI trace is not at {GMI}")
        sweep_all(names)
    (DOCS / "policies.md").write_text(build_page())
    print(f"wrote {DOCS / 'policies.md'}")


if __name__ == "__main__":
    main()
