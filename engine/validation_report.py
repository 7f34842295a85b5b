"""`validation.html`: the simulator-vs-engine table, the error of each metric against its goal,
and per-request TTFT and end-to-end latency, simulated against measured."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from apcsim.core.request import Status


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.5g}" if isinstance(x, float) else str(x)


def _goal(g: dict) -> str:
    v = g["value"]
    if g["kind"] == "abs":
        return f"|diff| ≤ {v}"
    if g["kind"] == "pct":
        return f"≤ {v} %"
    return f"≤ {v[0]} % or ≤ {v[1]}"


def _table(comparison: dict) -> str:
    head = "<tr><th>metric</th><th>simulated</th><th>measured</th><th>error %</th><th>abs error</th><th>goal (H100, online)</th><th></th></tr>"
    rows = []
    for name, v in comparison.items():
        err = "n/a" if v["error_pct"] is None else f"{v['error_pct']:+.2f}"
        ok = {True: "within", False: "above goal", None: "-"}[v["within_goal"]]
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(v['sim'])}</td><td>{_fmt(v['engine'])}</td>"
                    f"<td>{err}</td><td>{_fmt(v['abs_error'])}</td><td>{html.escape(_goal(v['goal']))}</td><td>{ok}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _latencies(requests) -> dict[str, tuple[float, float]]:
    return {r.request_id: (r.first_token_time - r.arrival_time, r.finish_time - r.arrival_time)
            for r in requests if r.status is Status.FINISHED}


def build_figure(comparison: dict, engine_requests, sim_requests, title: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("error % per metric", "TTFT per request (s)",
                                                        "end-to-end per request (s)"))
    names = [n for n, v in comparison.items() if v["error_pct"] is not None]
    errs = [comparison[n]["error_pct"] for n in names]
    colors = ["#2a9d8f" if comparison[n]["within_goal"] else "#e76f51" for n in names]
    fig.add_trace(go.Bar(x=names, y=errs, marker_color=colors, name="error %"), row=1, col=1)
    eng, sim = _latencies(engine_requests), _latencies(sim_requests)
    ids = [i for i in eng if i in sim]
    for col, k in ((2, 0), (3, 1)):
        x = [eng[i][k] for i in ids]
        y = [sim[i][k] for i in ids]
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", text=ids, marker={"size": 5}, name="requests"),
                      row=1, col=col)
        hi = max(x + y, default=1.0)
        fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line={"dash": "dot", "color": "gray"},
                                 name="sim = engine"), row=1, col=col)
        fig.update_xaxes(title_text="engine (measured)", row=1, col=col)
        fig.update_yaxes(title_text="simulator", row=1, col=col)
    fig.update_layout(title=title, height=520, showlegend=False, template="plotly_white")
    return fig


def write_validation_html(path: Path, out, include_plotlyjs: str = "inline") -> None:
    i = out.info
    title = (f"validation: {i['workload']}, policy={i['policy']}, block_size={i['block_size']}, "
             f"{i['model']} on {i['device']} vs simulator ({i['cost_model']})")
    fig = build_figure(out.comparison, out.engine.loop.requests, out.sim.simulation.requests, title)
    plot = fig.to_html(full_html=False, include_plotlyjs=True if include_plotlyjs == "inline" else "cdn")
    d = i["decisions"]
    decisions = (f"{d['requests_differing']} of {d['requests_compared']} requests scheduled differently "
                 f"(prefix hit, preemptions, outputs)"
                 + ("" if d["plans_identical"] is None else
                    f"; per-step plans identical: {d['plans_identical']} over {d['plans_compared']} steps"))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;border-bottom:1px solid #ddd;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        f"<p>online arrivals: {i['online']}; KV cache: {i['num_gpu_blocks']} blocks in both; profile: "
        f"{html.escape(str(i['profile']))}</p>"
        f"<p>{html.escape(decisions)}</p>{_table(out.comparison)}{plot}</body></html>"
    )
    path.write_text(page)
