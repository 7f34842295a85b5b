"""`sweep.html`: a sweep's jobs side by side (plotly).

For each swept key, prefix-cache hit rate, output throughput and TTFT p99 against that key, one
line per eviction policy (a key swept on a wide numeric range, e.g. num_gpu_blocks on a log
grid, gets a log axis). Where other keys were swept too, each point is the mean over them, and
the subplot title says so. When two numeric keys are swept, a heatmap of hit rate and TTFT p99
over both, one row per policy. Failed jobs are listed with their error under the figures.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from apcsim.sweep import override_keys, swept_keys

# (column of sweep.csv, label)
LINE_METRICS = (("prefix_cache_hit_rate", "prefix-cache hit rate"),
                ("output_throughput_tok_s", "output throughput (tok/s)"),
                ("ttft_s_p99", "TTFT p99 (s)"))
HEATMAP_METRICS = (("prefix_cache_hit_rate", "hit rate"), ("ttft_s_p99", "TTFT p99 (s)"))
POLICY_KEY = "policy"


def policy_of(row: dict) -> str:
    """The eviction policy of a job; no `+policy` override means caching off, i.e. `none`."""
    return str(row.get(POLICY_KEY) or row.get("config_policy") or "none")


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def is_numeric(rows: list[dict], key: str) -> bool:
    return all(_number(r.get(key)) is not None for r in rows)


def _log_axis(values: list[float], ratio: float = 16) -> bool:
    return min(values) > 0 and max(values) / min(values) >= ratio


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _ordered(rows: list[dict], key: str, numeric: bool) -> list:
    seen: list = []
    for r in rows:
        v = _number(r[key]) if numeric else str(r[key])
        if v not in seen:
            seen.append(v)
    return sorted(seen) if numeric else seen


def _policies(rows: list[dict]) -> list[str]:
    out: list[str] = []
    for r in rows:
        if policy_of(r) not in out:
            out.append(policy_of(r))
    return out


def line_figure(rows: list[dict], key: str, others: list[str]) -> go.Figure:
    """The three metrics against `key`, a line per policy; a mean over `others` per point."""
    numeric = is_numeric(rows, key)
    xs = _ordered(rows, key, numeric)
    note = f" (mean over {', '.join(others)})" if others else ""
    fig = make_subplots(rows=1, cols=len(LINE_METRICS), horizontal_spacing=0.08,
                        subplot_titles=[f"{label}{note}" for _, label in LINE_METRICS])
    for col, (metric, _) in enumerate(LINE_METRICS, start=1):
        ys = [y for y in (_number(r.get(metric)) for r in rows) if y is not None]
        if metric.startswith("ttft") and ys and _log_axis(ys, 100):
            fig.update_yaxes(type="log", row=1, col=col)  # latencies spanning decades
    for i, policy in enumerate(_policies(rows)):
        mine = [r for r in rows if policy_of(r) == policy]
        for col, (metric, _) in enumerate(LINE_METRICS, start=1):
            groups: dict = defaultdict(list)
            for r in mine:
                groups[_number(r[key]) if numeric else str(r[key])].append(_number(r.get(metric)))
            x = [v for v in xs if v in groups]
            fig.add_trace(go.Scatter(
                x=x, y=[_mean(groups[v]) for v in x], mode="lines+markers", name=policy,
                legendgroup=policy, showlegend=col == 1, line={"color": _color(i)},
            ), row=1, col=col)
            fig.update_xaxes(title_text=key, type="log" if numeric and _log_axis(x or [1]) else None,
                             row=1, col=col)
    fig.update_layout(title=f"against {key}", height=380, margin={"t": 70, "b": 50})
    return fig


def heatmap_figure(rows: list[dict], kx: str, ky: str, others: list[str]) -> go.Figure:
    policies = _policies(rows)
    xs, ys = _ordered(rows, kx, True), _ordered(rows, ky, True)
    note = f", mean over {', '.join(others)}" if others else ""
    titles = [f"{p}: {label}{note}" for p in policies for _, label in HEATMAP_METRICS]
    fig = make_subplots(rows=len(policies), cols=len(HEATMAP_METRICS), subplot_titles=titles,
                        vertical_spacing=min(0.12, 0.3 / max(len(policies), 1)))
    for i, policy in enumerate(policies, start=1):
        mine = [r for r in rows if policy_of(r) == policy]
        for col, (metric, label) in enumerate(HEATMAP_METRICS, start=1):
            cells: dict = defaultdict(list)
            for r in mine:
                cells[(_number(r[kx]), _number(r[ky]))].append(_number(r.get(metric)))
            z = [[_mean(cells.get((x, y), [])) for x in xs] for y in ys]
            fig.add_trace(go.Heatmap(
                x=[str(_fmt(x)) for x in xs], y=[str(_fmt(y)) for y in ys], z=z,
                colorscale="Viridis" if metric == "prefix_cache_hit_rate" else "Magma_r", showscale=False,
                hovertemplate=f"{kx}=%{{x}}<br>{ky}=%{{y}}<br>{label}=%{{z:.4g}}<extra>{policy}</extra>",
                texttemplate="%{z:.3g}",
            ), row=i, col=col)
            fig.update_xaxes(title_text=kx, type="category", row=i, col=col)
            fig.update_yaxes(title_text=ky, type="category", row=i, col=col)
    fig.update_layout(title=f"{ky} against {kx}", height=320 * len(policies) + 80)
    return fig


def _fmt(x: float):
    return int(x) if float(x).is_integer() else x


def _color(i: int) -> str:
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
    return palette[i % len(palette)]


def build_figures(rows: list[dict]) -> list[go.Figure]:
    """Figures of the successful jobs (none if no job succeeded)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return []
    keys = swept_keys(ok)
    x_keys = [k for k in keys if k != POLICY_KEY] or [POLICY_KEY]
    figs = []
    for key in x_keys:
        others = [k for k in keys if k not in (key, POLICY_KEY)]
        figs.append(line_figure(ok, key, others))
    numeric = [k for k in keys if k != POLICY_KEY and is_numeric(ok, k)]
    if len(numeric) >= 2:
        kx, ky = numeric[:2]
        others = [k for k in keys if k not in (kx, ky, POLICY_KEY)]
        figs.append(heatmap_figure(ok, kx, ky, others))
    return figs


def _failed_table(rows: list[dict]) -> str:
    bad = [r for r in rows if r.get("status") != "ok"]
    if not bad:
        return ""
    lines = "".join(
        f"<tr><td>{html.escape(str(r['job']))}</td><td>{html.escape(r['status'])}</td>"
        f"<td>{html.escape(' '.join(f'{k}={r[k]}' for k in override_keys(r)))}</td>"
        f"<td>{html.escape(str(r.get('error', '')))}</td></tr>" for r in bad)
    return (f"<h2>{len(bad)} job(s) without results</h2><table><tr><th>job</th><th>status</th>"
            f"<th>overrides</th><th>error</th></tr>{lines}</table>")


def write_sweep_html(path: Path, rows: list[dict], *, title: str, include_plotlyjs: str = "inline") -> int:
    """Write the page; returns the number of figures on it."""
    figs = build_figures(rows)
    parts = []
    for i, fig in enumerate(figs):
        js = (True if include_plotlyjs == "inline" else "cdn") if i == 0 else False
        parts.append(fig.to_html(full_html=False, include_plotlyjs=js))
    ok = sum(r.get("status") == "ok" for r in rows)
    keys = swept_keys(rows) if rows else []
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>apcsim sweep: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}}</style></head>
<body><h1>apcsim sweep</h1>
<p>{html.escape(title)}: {len(rows)} jobs, {ok} with results; swept: {html.escape(', '.join(keys) or '-')}.
Table: sweep.csv beside this page.</p>
{''.join(parts)}
{_failed_table(rows)}
</body></html>
"""
    Path(path).write_text(page)
    return len(figs)
