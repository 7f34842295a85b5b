"""`report.html`: plotly figures of one run (simulated or measured).

TTFT and end-to-end latency CDFs (one line per priority class too, when the workload has
classes), then over time: prefix-cache hit rate, KV-cache usage, the
running batch and preemptions. The timeline has one row per step or skipped stretch, so the page
stays small for long runs. The page states the title once (the heading, not again over the
figure), the run's config under it, and the metrics table with a unit for each metric.
plotly.js is embedded once (`report.plotlyjs=inline`, a page that opens offline) or linked from
plotly's CDN (`report.plotlyjs=cdn`, a small page that needs the network).
The main figure is written as the dict plotly would make of it (report_dict: `layout_figure` and
its traces) in a page shell plotly writes once (plotly_html), so a run without a cluster imports
no plotly: the same page (tests hold it equal to the figure built with plotly's graph objects)
without the cost of importing plotly and validating a figure.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from apcsim.outputs.metrics import Timeline
from apcsim.outputs.plotly_html import figure_html_bytes
from apcsim.outputs.report_dict import PANELS, figure_dict, thin
from apcsim.outputs.requestlog import RequestLog

if TYPE_CHECKING:  # plotly's graph objects are imported where a figure is built: a plain report needs none
    import plotly.graph_objects as go


def layout_figure(showlegend: bool) -> go.Figure:
    """The main figure without its traces: the grid, titles and template (its whole layout)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=2, vertical_spacing=0.09, subplot_titles=[p[0] for p in PANELS])
    for k, (_, xt, yt) in enumerate(PANELS):
        fig.update_xaxes(title_text=xt, row=k // 2 + 1, col=k % 2 + 1)
        fig.update_yaxes(title_text=yt, row=k // 2 + 1, col=k % 2 + 1)
    fig.update_layout(height=1100, showlegend=showlegend, template="plotly_white", margin={"t": 40})
    return fig


# Unit of each metrics.json key (README, "What each metric means"); none for counts and ratios.
UNITS = {
    "prefix_cache_queries": "tokens", "prefix_cache_hits": "tokens", "preempted_prefix_cache_queries": "tokens",
    "preempted_prefix_cache_hits": "tokens", "prompt_tokens": "tokens", "prompt_tokens_computed": "tokens",
    "recomputed_tokens": "tokens", "output_tokens": "tokens", "duration_s": "s (simulated)",
    "output_throughput_tok_s": "tokens/s", "total_token_throughput_tok_s": "tokens/s", "request_throughput_rps": "requests/s",
    "ttft_s": "s", "tpot_s": "s", "itl_s": "s", "e2e_s": "s", "prefix_cache_hit_rate": "fraction",
    "busy_fraction": "fraction", "peak_kv_usage": "fraction", "mean_batch_size": "requests",
    "num_requests": "requests", "num_finished": "requests", "num_rejected": "requests", "num_preemptions": "count",
    "num_evictions": "blocks", "num_steps": "steps",
}


def config_line(c: dict) -> str:
    """The run's setup in one line: what was simulated, on what, with which cache."""
    tokens = c.get("num_gpu_blocks", 0) * c.get("block_size", 0) if "num_gpu_blocks" in c else None
    parts = [f"workload {c.get('workload', '?')}", f"policy {c.get('policy', '?')}", f"scheduler {c.get('scheduler', '?')}",
             f"hardware {c.get('hardware', '?')}" + (f" x{c['tp']} (tp)" if c.get("tp", 1) != 1 else ""),
             f"model {c.get('model', '?')}", f"cost model {c.get('cost_model', '?')}"]
    if tokens is not None:
        parts.append(f"KV cache {c['num_gpu_blocks']:,} blocks of {c.get('block_size')} = {tokens:,} tokens")
    parts.append(f"seed {c.get('seed', '?')}")
    return "; ".join(parts)


def _metrics_table(m: dict) -> str:
    rows = ["<tr><th>metric</th><th>value</th><th>unit</th></tr>"]
    for k, v in m.items():
        if k in ("by_priority_class", "config", "cluster"):
            continue  # their own table, the page header
        if isinstance(v, dict) and "p50" in v:
            v = "no samples" if not v["n"] else ", ".join(f"{s} {v[s]:.4g}" for s in ("mean", "p50", "p90", "p99"))
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.6g}"
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td><td>{UNITS.get(k, '')}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _class_table(m: dict) -> str:
    """TTFT and end-to-end latency per priority class (metrics.json's by_priority_class)."""
    classes = m.get("by_priority_class")
    if not classes:
        return ""
    cell = lambda v: "n/a" if v is None else f"{v:.4g}"
    head = ("class", "priority", "requests", "finished", "cached token fraction", "TTFT p50 (s)", "TTFT p99 (s)",
            "E2E p50 (s)", "E2E p99 (s)")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, v in classes.items():
        cells = (name, v["priority"], v["num_requests"], v["num_finished"], f"{v['cached_token_fraction']:.3f}",
                 cell(v["ttft_s"]["p50"]), cell(v["ttft_s"]["p99"]), cell(v["e2e_s"]["p50"]), cell(v["e2e_s"]["p99"]))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return "<h2>By priority class</h2><table>" + "".join(rows) + "</table>"


def build_replica_figure(metrics: dict, timelines: list[Timeline]) -> go.Figure:
    """A cluster's replicas side by side: what the router sent each, their latency, and their
    caches over time (one line per replica)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    reps = metrics["cluster"]["replicas"]
    fig = make_subplots(
        rows=3, cols=2, vertical_spacing=0.1,
        subplot_titles=("Requests routed", "TTFT p50 / p99", "Prefix-cache hit rate", "Preemptions",
                        "KV-cache usage", "Prefix-cache hit rate (cumulative)"),
    )
    names = [f"replica {r['replica']}" for r in reps]
    p = lambda r, key, q: r[key][q] if r[key][q] is not None else float("nan")
    fig.add_trace(go.Bar(x=names, y=[r["requests_routed"] for r in reps], name="requests", showlegend=False), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[p(r, "ttft_s", "p50") for r in reps], name="TTFT p50"), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=[p(r, "ttft_s", "p99") for r in reps], name="TTFT p99"), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=[r["prefix_cache_hit_rate"] for r in reps], name="hit rate", showlegend=False),
                  row=2, col=1)
    fig.add_trace(go.Bar(x=names, y=[r["num_preemptions"] for r in reps], name="preemptions", showlegend=False),
                  row=2, col=2)
    for name, tl in zip(names, timelines):
        t = tl.as_arrays()
        if not len(t["time"]):
            continue
        for key, col in (("kv_usage", 1), ("hit_rate", 2)):
            xs, ys = thin(t["time"], t[key])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name, showlegend=col == 1,
                                     line_shape="hv"), row=3, col=col)
    for row, col, xt, yt in [(1, 2, "", "s"), (2, 1, "", "hits / queries"), (2, 2, "", "preemptions"),
                             (3, 1, "time (s)", "blocks in use / all"), (3, 2, "time (s)", "hits / queries")]:
        fig.update_xaxes(title_text=xt, row=row, col=col)
        fig.update_yaxes(title_text=yt, row=row, col=col)
    fig.update_layout(height=1100, template="plotly_white", margin={"t": 40}, barmode="group")
    return fig


def _cluster_table(m: dict) -> str:
    cl = m.get("cluster")
    if not cl:
        return ""
    imb = cl["load_imbalance"]
    head = (f"<p>{cl['num_replicas']} replicas behind router <b>{html.escape(cl['router'])}</b>; load imbalance "
            f"(max / mean over replicas): requests {imb['requests']:.3f}, prompt tokens {imb['prompt_tokens']:.3f}, "
            f"busy time {imb['busy_time']:.3f}")
    if cl.get("router_stats"):
        head += "; router: " + html.escape(", ".join(f"{k}={v}" for k, v in cl["router_stats"].items()))
    if cl.get("pooled_bound"):
        head += "; one pooled cache: " + html.escape(", ".join(f"{k}={v:.4g}" for k, v in cl["pooled_bound"].items()))
    cell = lambda v: "n/a" if v is None else f"{v:.4g}"
    cols = ("replica", "requests", "prompt tokens", "hit rate", "preemptions", "busy", "TTFT p50 (s)", "TTFT p99 (s)",
            "E2E p99 (s)")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in cols) + "</tr>"]
    for r in cl["replicas"]:
        cells = (r["replica"], r["requests_routed"], r["prompt_tokens_routed"], f"{r['prefix_cache_hit_rate']:.3f}",
                 r["num_preemptions"], f"{r['busy_fraction']:.3f}", cell(r["ttft_s"]["p50"]), cell(r["ttft_s"]["p99"]),
                 cell(r["e2e_s"]["p99"]))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return head + "</p><table>" + "".join(rows) + "</table>"


def _tier_table(m: dict) -> str:
    """The GPU and host tiers side by side (metrics.json `host_tier`; empty without one)."""
    t = m.get("host_tier")
    if not t:
        return ""
    gb = lambda n: f"{n / 1e9:.3g} GB"
    cols = ("tier", "blocks", "blocks used (peak)", "occupancy", "hit tokens", "hit rate", "moved in", "moved out")
    gpu = ("GPU", m["config"]["num_gpu_blocks"], "", "", m["prefix_cache_hits"], f"{m['prefix_cache_hit_rate']:.3f}",
           gb(t["kv_offload_bytes_cpu_to_gpu"]), gb(t["kv_offload_bytes_gpu_to_cpu"]))
    host = (f"host ({t['policy']}, write-{t['write']})", t["num_blocks"], f"{t['used_blocks']} ({t['peak_used_blocks']})",
            f"{t['occupancy']:.3f}", t["external_prefix_cache_hits"], f"{t['external_prefix_cache_hit_rate']:.3f}",
            gb(t["kv_offload_bytes_gpu_to_cpu"]), gb(t["kv_offload_bytes_cpu_to_gpu"]))
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in cols) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in (gpu, host)]
    stall = f", steps waited {t['transfer_stall_s']:.4g} s on copies" if "transfer_stall_s" in t else ""
    return (f"<h2>KV tiers</h2><p>both tiers' hit rate {t['combined_prefix_cache_hit_rate']:.3f}; {t['loads']} loads, "
            f"{t['reloads_skipped']} reloads skipped (reload={html.escape(t['reload'])}){stall}</p>"
            "<table>" + "".join(rows) + "</table>")


def write_report(path: Path, metrics: dict, log: RequestLog, timeline: Timeline,
                 include_plotlyjs: str = "inline", replica_timelines: list[Timeline] | None = None) -> None:
    """`replica_timelines`: a cluster's, one per replica (metrics.json then has `cluster`): the
    page adds a Replicas section after the cluster-wide latency CDFs."""
    c = metrics.get("config", {})
    title = f"apcsim: {c.get('workload', '?')}, policy={c.get('policy', '?')}, block_size={c.get('block_size', '?')}"
    if "num_replicas" in c:
        title += f", {c['num_replicas']} replicas, router={c.get('router', '?')}"
    # The main figure as a plain dict in a cached page shell: no plotly import (report_dict, plotly_html).
    plot = figure_html_bytes(figure_dict(log, timeline), include_plotlyjs=True if include_plotlyjs == "inline" else "cdn")
    replicas = ""
    if replica_timelines is not None and "cluster" in metrics:
        replicas = "<h2>Replicas</h2>" + _cluster_table(metrics)
        replicas += build_replica_figure(metrics, replica_timelines).to_html(full_html=False, include_plotlyjs=False)
    head = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;border-bottom:1px solid #ddd;text-align:left}"
        "</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p><b>{html.escape(config_line(c))}</b></p>"
    )
    tail = f"{replicas}{_class_table(metrics)}{_tier_table(metrics)}<h2>Metrics</h2>{_metrics_table(metrics)}</body></html>"
    from apcsim.outputs.rundir import write_bytes_atomic

    # UTF-8, as the page declares; the plot stays bytes (see plotly_html).
    write_bytes_atomic(path, b"".join((head.encode("utf-8"), plot, tail.encode("utf-8"))))
