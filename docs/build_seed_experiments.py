"""Run the seed article's four experiments in simulation and write docs/seed_experiments.md.

    python docs/build_seed_experiments.py            # runs the four +experiment presets (minutes)
    python docs/build_seed_experiments.py --reuse    # rebuild the page from docs/data/*.csv

Each preset is a Hydra multirun (`python -m apcsim +experiment=NAME`); its jobs' metrics are
collected into docs/data/NAME.csv. Figures go to docs/figures/ as HTML (plotly) and PNG (when
plotly's image export, kaleido, is available). The hand-written discussion in
docs/seed_experiments_discussion.md is appended to the generated tables.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from apcsim.sweep.collect import collect, write_csv

DOCS = Path(__file__).resolve().parent
DATA, FIGS = DOCS / "data", DOCS / "figures"
PRESETS = ["seed_overhead", "seed_shared_prefix", "seed_prefix_ratio", "seed_budget"]

# The article's reported deltas (vLLM 0.6.3 / TensorRT-LLM 0.15, A100 80GB, Llama-3.1-8B BF16).
ARTICLE = {
    "seed_overhead": {"vLLM 0.6.3": ("-36.7 %", "+25.0 %"), "TensorRT-LLM 0.15": ("negligible", "negligible")},
    "seed_shared_prefix": {"vLLM 0.6.3": ("+13.3 %", "-9.8 %"), "TensorRT-LLM 0.15": ("+34.7 %", "-20.9 %")},
    "seed_prefix_ratio": {"vLLM 0.6.3": "+32 %", "TensorRT-LLM 0.15": "+49 %"},
}


def run_preset(name: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "apcsim", f"+experiment={name}", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def load(name: str) -> list[dict]:
    with open(DATA / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v) if any(c in v for c in ".eE") or k.endswith(("_s", "_rps", "rate")) else int(v)
            except (TypeError, ValueError):
                pass
    return rows


def pct(new: float, old: float) -> float:
    return 100.0 * (new / old - 1.0)


def fmt_pct(x: float) -> str:
    return f"{x:+.1f} %"


def pairs(rows: list[dict], keys: list[str]):
    """(key tuple, row without caching, row with LRU) for every grid point."""
    by = {}
    for r in rows:
        by.setdefault(tuple(r[k] for k in keys), {})[r["policy"]] = r
    for k in sorted(by):
        if {"none", "lru"} <= set(by[k]):
            yield k, by[k]["none"], by[k]["lru"]


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def save(fig: go.Figure, stem: str) -> str:
    FIGS.mkdir(parents=True, exist_ok=True)
    fig.write_html(FIGS / f"{stem}.html", include_plotlyjs="cdn")
    try:
        fig.write_image(FIGS / f"{stem}.png", width=1200, height=500, scale=1)
        return f"![{stem}](figures/{stem}.png) ([interactive](figures/{stem}.html))"
    except Exception as e:  # kaleido or its browser missing: HTML only, and say so
        print(f"PNG export of {stem} skipped: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return f"[{stem} (interactive)](figures/{stem}.html)"


def grid_section(name: str, title: str) -> str:
    rows = load(name)
    keys = ["workload.input_tokens", "max_concurrency"]
    lines, thr_d, tpot_d = [], [], []
    fig = make_subplots(rows=1, cols=3, subplot_titles=[f"input {n}" for n in (1024, 2048, 4096)])
    series = {}
    for (inp, conc), none, lru in pairs(rows, keys):
        dt = pct(lru["output_throughput_tok_s"], none["output_throughput_tok_s"])
        dp = pct(lru["tpot_s_mean"], none["tpot_s_mean"])
        thr_d.append(dt)
        tpot_d.append(dp)
        lines.append([inp, conc, f"{none['output_throughput_tok_s']:.0f}", f"{lru['output_throughput_tok_s']:.0f}", fmt_pct(dt),
                      f"{1e3 * none['tpot_s_mean']:.1f}", f"{1e3 * lru['tpot_s_mean']:.1f}", fmt_pct(dp),
                      f"{none['ttft_s_p50']:.3f}", f"{lru['ttft_s_p50']:.3f}",
                      f"{lru['prefix_cache_hit_rate']:.3f}", f"{none['num_preemptions']:.0f} / {lru['num_preemptions']:.0f}"])
        for pol, r in (("none", none), ("lru", lru)):
            s = series.setdefault((inp, pol), ([], [], []))
            s[0].append(1e3 * r["tpot_s_mean"])
            s[1].append(r["output_throughput_tok_s"])
            s[2].append(str(conc))
    for (inp, pol), (x, y, text) in sorted(series.items()):
        col = {1024: 1, 2048: 2, 4096: 3}.get(inp)
        if col is None:
            continue
        fig.add_trace(go.Scatter(x=x, y=y, text=text, mode="lines+markers+text", textposition="top center",
                                 name=f"{'APC on (lru)' if pol == 'lru' else 'APC off'}", legendgroup=pol,
                                 showlegend=col == 1, line=dict(color="#d62728" if pol == "lru" else "#1f77b4")),
                      row=1, col=col)
    fig.update_xaxes(title_text="TPOT mean (ms)")
    fig.update_yaxes(title_text="output throughput (tok/s)", col=1)
    fig.update_layout(title=f"{title}: throughput vs TPOT, labels = max concurrency", template="plotly_white")
    link = save(fig, name)
    mean = lambda xs: sum(xs) / len(xs)
    art = ARTICLE[name]
    summary = table(["", "throughput change from APC", "TPOT change from APC"], [
        ["apcsim (mean over the grid)", fmt_pct(mean(thr_d)), fmt_pct(mean(tpot_d))],
        ["apcsim (range over the grid)", f"{min(thr_d):+.1f} .. {max(thr_d):+.1f} %", f"{min(tpot_d):+.1f} .. {max(tpot_d):+.1f} %"],
        *[[k, *v] for k, v in art.items()],
    ])
    detail = table(["input", "max conc.", "thr off", "thr on", "Δ thr", "TPOT off (ms)", "TPOT on (ms)", "Δ TPOT",
                    "TTFT p50 off (s)", "TTFT p50 on (s)", "hit rate", "preemptions off / on"], lines)
    return f"{summary}\n\n{link}\n\n<details><summary>Every grid point</summary>\n\n{detail}\n\n</details>\n"


def ratio_section() -> str:
    rows = load("seed_prefix_ratio")
    lines, xs, y_on, y_off = [], [], [], []
    for (frac,), none, lru in pairs(rows, ["workload.shared_fraction"]):
        xs.append(frac)
        y_off.append(none["output_throughput_tok_s"])
        y_on.append(lru["output_throughput_tok_s"])
        lines.append([frac, f"{none['output_throughput_tok_s']:.0f}", f"{lru['output_throughput_tok_s']:.0f}",
                      fmt_pct(pct(lru["output_throughput_tok_s"], none["output_throughput_tok_s"])),
                      f"{lru['prefix_cache_hit_rate']:.3f}", f"{lru['ttft_s_p50']:.3f}"])
    fig = go.Figure([go.Scatter(x=xs, y=y_off, name="APC off", mode="lines+markers"),
                     go.Scatter(x=xs, y=y_on, name="APC on (lru)", mode="lines+markers")])
    fig.update_layout(title="Throughput vs shared-prefix ratio (1K in / 1K out, concurrency 128)",
                      xaxis_title="shared prefix ratio", yaxis_title="output throughput (tok/s)", template="plotly_white")
    link = save(fig, "seed_prefix_ratio")
    gain = pct(y_on[-1], y_on[0])
    summary = table(["", "throughput gain, ratio 0.1 -> 0.9 (APC on)"], [
        ["apcsim", fmt_pct(gain)], *[[k, v] for k, v in ARTICLE["seed_prefix_ratio"].items()]])
    detail = table(["shared ratio", "thr off", "thr on", "Δ", "hit rate", "TTFT p50 on (s)"], lines)
    return f"{summary}\n\n{link}\n\n{detail}\n"


VARIANTS = {  # (cache_aware_budget, cache_aware_admission) -> label
    ("true", "true"): "cache-aware (>= 0.6.5)",
    ("false", "true"): "budget charged",
    ("true", "false"): "all blocks free",
    ("false", "false"): "both (0.6.3)",
}


def budget_section() -> str:
    rows = load("seed_budget")
    keys = ["scheduler.chunked_prefill", "workload.input_tokens", "max_concurrency"]
    by = {}
    for r in rows:
        variant = (str(r["scheduler.cache_aware_budget"]).lower(), str(r["scheduler.cache_aware_admission"]).lower())
        by.setdefault(tuple(str(r[k]).lower() for k in keys), {})[variant] = r
    # APC off on the same workload, from experiment 2 (chunked prefill only).
    off = {(str(inp), str(conc)): none for (inp, conc), none, _ in
           pairs(load("seed_shared_prefix"), ["workload.input_tokens", "max_concurrency"])}
    lines, labels = [], []
    thr = {v: [] for v in VARIANTS}
    pre = {v: [] for v in VARIANTS}
    for k in sorted(by, key=lambda k: (k[0], int(k[1]), int(k[2]))):
        if set(VARIANTS) - set(by[k]):
            continue
        chunked, inp, conc = k
        labels.append(f"{'chunked' if chunked == 'true' else 'whole'} {inp}/{conc}")
        base = off.get((inp, conc)) if chunked == "true" else None
        cells = [chunked, inp, conc, f"{base['output_throughput_tok_s']:.0f} / {base['num_preemptions']:.0f}" if base else "-"]
        for v in VARIANTS:
            r = by[k][v]
            thr[v].append(r["output_throughput_tok_s"])
            pre[v].append(r["num_preemptions"])
            cells.append(f"{r['output_throughput_tok_s']:.0f} / {r['num_preemptions']:.0f} / {r['ttft_s_p50']:.2f}")
        lines.append(cells)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["output throughput (tok/s)", "preemptions"])
    colors = ["#2ca02c", "#ff7f0e", "#9467bd", "#d62728"]
    for (v, label), color in zip(VARIANTS.items(), colors):
        fig.add_trace(go.Bar(x=labels, y=thr[v], name=label, marker_color=color, legendgroup=label), row=1, col=1)
        fig.add_trace(go.Bar(x=labels, y=pre[v], name=label, marker_color=color, legendgroup=label, showlegend=False),
                      row=1, col=2)
    fig.update_layout(title="Ignoring cache hits in the scheduler, as vLLM 0.6.3 did (prefill mode, input/concurrency)",
                      barmode="group", template="plotly_white")
    link = save(fig, "seed_budget")
    detail = table(["chunked prefill", "input", "max conc.", "APC off: thr / preemptions",
                    *[f"{label}: thr / preempt. / TTFT p50 (s)" for label in VARIANTS.values()]], lines)
    return f"{link}\n\n{detail}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse", action="store_true", help="rebuild from docs/data/*.csv without running")
    ap.add_argument("--only", nargs="+", choices=PRESETS, default=PRESETS, metavar="PRESET",
                    help="run just these presets, reusing the others' CSVs")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only:
                print(f"running +experiment={name} ...", flush=True)
                run_preset(name, Path(tmp) / name)
                write_csv(collect(Path(tmp) / name), DATA / f"{name}.csv")
    from apcsim.cli.compose import compose_config
    from apcsim.run import build_cost_model

    cost_name = build_cost_model(compose_config([])).name
    page = [
        "# The seed article's experiments, in simulation",
        "",
        "The article: *[vLLM vs TensorRT-LLM] #12. Automatic Prefix Caching* (SqueezeBits), Llama-3.1-8B-Instruct",
        "BF16 on one A100-SXM 80GB, vLLM 0.6.3 and TensorRT-LLM 0.15, 256 requests, output 1K tokens, max batch 128.",
        "Here the same grids run in apcsim with its defaults (A100 80GB, Llama-3.1-8B, block size 16, chunked",
        "prefill with an 8,192-token budget, cache-aware budget as in vLLM >= 0.6.5 unless stated) and the",
        f"cost model `{cost_name}`. Throughput is output tokens per second; TPOT is the mean over requests.",
        "",
        f"Generated by `python docs/build_seed_experiments.py` on {datetime.date.today().isoformat()} "
        f"({platform.machine()}, Python {platform.python_version()}); raw rows in `docs/data/`.",
        "Each experiment is a preset: `python -m apcsim +experiment=NAME` runs its grid as a Hydra multirun.",
        "",
        "## 1. Overhead of prefix caching with nothing shared (`+experiment=seed_overhead`)",
        "",
        grid_section("seed_overhead", "Fixed random set (no shared prefix)"),
        "## 2. Gain on the Dynamic-Sonnet-like set, a quarter shared (`+experiment=seed_shared_prefix`)",
        "",
        grid_section("seed_shared_prefix", "Dynamic-Sonnet-like set (25 % shared)"),
        "## 3. Shared-prefix ratio 0.1 .. 0.9 (`+experiment=seed_prefix_ratio`)",
        "",
        ratio_section(),
        "## 4. Ignoring cache hits in the scheduler, as vLLM 0.6.3 did (`+experiment=seed_budget`)",
        "",
        budget_section(),
    ]
    discussion = DOCS / "seed_experiments_discussion.md"
    if discussion.is_file():
        page += [discussion.read_text()]
    (DOCS / "seed_experiments.md").write_text("\n".join(page).rstrip() + "\n")
    print(f"wrote {DOCS / 'seed_experiments.md'}")


if __name__ == "__main__":
    main()
