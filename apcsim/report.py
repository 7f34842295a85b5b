"""`report.html`: plotly figures of one run (simulated or measured).

TTFT and end-to-end latency CDFs, then over time: prefix-cache hit rate, KV-cache usage, the
running batch and preemptions. The timeline has one row per step or skipped stretch, so the page
stays small for long runs.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from apcsim.metrics import Timeline
from apcsim.requestlog import RequestLog

_MAX_POINTS = 4000  # per trace; more adds bytes, not information


def _thin(*arrays: np.ndarray):
    n = len(arrays[0])
    if n <= _MAX_POINTS:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, _MAX_POINTS).astype(np.int64))
    return tuple(a[idx] for a in arrays)


def _cdf(values) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(np.asarray(values, dtype=np.float64))
    return _thin(v, np.arange(1, len(v) + 1) / max(len(v), 1))


def build_figure(log: RequestLog, timeline: Timeline, title: str) -> go.Figure:
    """From the run's per-request columns (not Request objects: a long run does not keep them)."""
    c = log.columns()
    fig = make_subplots(
        rows=3, cols=2, vertical_spacing=0.09,
        subplot_titles=("TTFT CDF", "End-to-end latency CDF", "Prefix-cache hit rate (cumulative)",
                        "KV-cache usage", "Running batch size", "Preemptions (cumulative)"),
    )
    x, y = _cdf(c["ttft"][c["finished"]])
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="TTFT"), row=1, col=1)
    x, y = _cdf(c["e2e"][c["finished"]])
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="E2E"), row=1, col=2)
    t = timeline.as_arrays()
    if len(t["time"]):
        series = [("hit_rate", 2, 1), ("kv_usage", 2, 2), ("batch", 3, 1), ("preemptions", 3, 2)]
        for key, row, col in series:
            xs, ys = _thin(t["time"], t[key])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key, line_shape="hv"), row=row, col=col)
    for row, col, xt, yt in [(1, 1, "TTFT (s)", "fraction of requests"), (1, 2, "latency (s)", "fraction of requests"),
                             (2, 1, "time (s)", "hits / queries"), (2, 2, "time (s)", "blocks in use / all"),
                             (3, 1, "time (s)", "requests per step"), (3, 2, "time (s)", "preemptions")]:
        fig.update_xaxes(title_text=xt, row=row, col=col)
        fig.update_yaxes(title_text=yt, row=row, col=col)
    fig.update_layout(title=title, height=1100, showlegend=False, template="plotly_white")
    return fig


def _metrics_table(m: dict) -> str:
    rows = []
    for k, v in m.items():
        if isinstance(v, dict) and "p50" in v:
            v = "no samples" if not v["n"] else ", ".join(f"{s} {v[s]:.4g}" for s in ("mean", "p50", "p90", "p99"))
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.6g}"
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(path: Path, metrics: dict, log: RequestLog, timeline: Timeline,
                 include_plotlyjs: str = "inline") -> None:
    c = metrics.get("config", {})
    title = f"apcsim: {c.get('workload', '?')}, policy={c.get('policy', '?')}, block_size={c.get('block_size', '?')}"
    fig = build_figure(log, timeline, title)
    plot = fig.to_html(full_html=False, include_plotlyjs=True if include_plotlyjs == "inline" else "cdn")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 12px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{plot}<h2>Metrics</h2>{_metrics_table(metrics)}</body></html>"
    )
    from apcsim.rundir import write_text_atomic

    write_text_atomic(path, page)
