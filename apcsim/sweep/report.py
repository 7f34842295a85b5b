"""`sweep.html`: a sweep's jobs side by side (plotly).

For each swept key, prefix-cache hit rate, output throughput and TTFT p99 against that key, one
line per eviction policy (a key swept on a wide numeric range, e.g. num_gpu_blocks on a log
grid, gets a log axis). Where other keys were swept too, each point is the mean over them, and
the subplot title says so. When two numeric keys are swept, a heatmap of hit rate and TTFT p99
over both, one row per policy, with one colour scale (and colour bar) per metric shared by every
policy, so equal colours are equal values. Read at a glance: hit-rate axes start at 0, a policy
whose line coincides with another's is drawn dashed with open markers and named "(= other)"
instead of vanishing under it (in a subplot where only that metric coincides, the line alone
is drawn so; earlier policies are drawn wider, so near-coinciding lines stay visible), and the
page header names what was simulated (hardware, model,
tp, cost model, cache size in blocks and tokens). Failed jobs are listed with their error under
the figures.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from apcsim.sweep.collect import override_keys, swept_keys

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
    series = {}  # policy -> [(x, y) per metric]
    for policy in _policies(rows):
        mine = [r for r in rows if policy_of(r) == policy]
        per_metric = []
        for metric, _ in LINE_METRICS:
            groups: dict = defaultdict(list)
            for r in mine:
                groups[_number(r[key]) if numeric else str(r[key])].append(_number(r.get(metric)))
            x = [v for v in xs if v in groups]
            per_metric.append((x, [_mean(groups[v]) for v in x]))
        series[policy] = per_metric
    same_everywhere = coinciding(series)
    same_per_metric = [coinciding({p: [v[col]] for p, v in series.items()}) for col in range(len(LINE_METRICS))]
    n = len(series)
    for i, (policy, per_metric) in enumerate(series.items()):
        twin = same_everywhere.get(policy)
        name = policy if twin is None else f"{policy} (= {twin})"
        for col, (x, y) in enumerate(per_metric, start=1):
            here = same_per_metric[col - 1].get(policy)
            # Earlier policies are drawn wider, so a line that runs on top of another leaves its
            # edges visible; one equal to another's is also dashed with open markers.
            style = {"color": _color(i), "dash": "dash" if here else "solid", "width": 1.5 + 1.5 * (n - 1 - i) / max(n - 1, 1)}
            marker = {"symbol": "circle-open", "size": 11, "line": {"width": 2}} if here else {"size": 7}
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=name, legendgroup=policy, showlegend=col == 1,
                line=style, marker=marker,
                hovertemplate=f"{policy}{f' (= {here})' if here else ''}<br>{key}=%{{x}}<br>%{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
            fig.update_xaxes(title_text=key, type="log" if numeric and _log_axis(x or [1]) else None,
                             row=1, col=col)
    for col, (metric, _) in enumerate(LINE_METRICS, start=1):
        if metric == "prefix_cache_hit_rate":
            fig.update_yaxes(rangemode="tozero", row=1, col=col)
    fig.update_layout(title=f"against {key}", height=380, margin={"t": 70, "b": 50})
    return fig


def coinciding(series: dict[str, list]) -> dict[str, str]:
    """Policies whose every plotted value equals an earlier policy's: {later: earlier}. Their
    lines would lie exactly on top of each other, so the later one is drawn to be seen."""
    out: dict[str, str] = {}
    names = list(series)
    for j, later in enumerate(names):
        for earlier in names[:j]:
            if earlier not in out and series[later] == series[earlier]:
                out[later] = earlier
                break
    return out


def heatmap_figure(rows: list[dict], kx: str, ky: str, others: list[str]) -> go.Figure:
    policies = _policies(rows)
    xs, ys = _ordered(rows, kx, True), _ordered(rows, ky, True)
    note = f", mean over {', '.join(others)}" if others else ""
    titles = [f"{p}: {label}{note}" for p in policies for _, label in HEATMAP_METRICS]
    fig = make_subplots(rows=len(policies), cols=len(HEATMAP_METRICS), subplot_titles=titles,
                        vertical_spacing=min(0.12, 0.3 / max(len(policies), 1)), horizontal_spacing=0.16)
    zs = {}
    for i, policy in enumerate(policies, start=1):
        mine = [r for r in rows if policy_of(r) == policy]
        for col, (metric, label) in enumerate(HEATMAP_METRICS, start=1):
            cells: dict = defaultdict(list)
            for r in mine:
                cells[(_number(r[kx]), _number(r[ky]))].append(_number(r.get(metric)))
            z = [[_mean(cells.get((x, y), [])) for x in xs] for y in ys]
            zs.setdefault(metric, []).extend(v for line in z for v in line if v is not None)
            fig.add_trace(go.Heatmap(
                x=[str(_fmt(x)) for x in xs], y=[str(_fmt(y)) for y in ys], z=z,
                coloraxis=f"coloraxis{col if col > 1 else ''}",
                hovertemplate=f"{kx}=%{{x}}<br>{ky}=%{{y}}<br>{label}=%{{z:.4g}}<extra>{policy}</extra>",
                texttemplate="%{z:.3g}",
            ), row=i, col=col)
            fig.update_xaxes(title_text=kx, type="category", row=i, col=col)
            fig.update_yaxes(title_text=ky, type="category", row=i, col=col)
    # One colour scale per metric across every policy: the same colour is the same value in each row.
    axes = {}
    for col, (metric, label) in enumerate(HEATMAP_METRICS, start=1):
        values = zs.get(metric) or [0.0]
        lo = 0.0 if metric == "prefix_cache_hit_rate" else min(values)
        x_end = fig.layout[f"xaxis{col if col > 1 else ''}"].domain[1]
        axes[f"coloraxis{col if col > 1 else ''}"] = {
            "colorscale": "Viridis" if metric == "prefix_cache_hit_rate" else "Magma_r",
            "cmin": lo, "cmax": max(max(values), lo + 1e-12),
            "colorbar": {"title": {"text": label}, "x": x_end + 0.01, "xanchor": "left", "len": 0.9, "thickness": 14},
        }
    fig.update_layout(title=f"{ky} against {kx} (one colour scale per metric)", height=320 * len(policies) + 80,
                      **axes)
    return fig


def _values(rows: list[dict], key: str) -> list[str]:
    return list(dict.fromkeys(str(r.get(key)) for r in rows if r.get(key) not in (None, "")))


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if lo == hi else f"{lo:,.0f} to {hi:,.0f}"


def simulated_setup(rows: list[dict]) -> str:
    """What the jobs simulated, from their metrics' config: hardware, model, tp, cost model, and the
    KV cache in blocks and in tokens (blocks x block size: the capacity that decides hits)."""
    if not rows:
        return "no job finished"
    parts = []
    for key, label in (("config_hardware", "hardware"), ("config_model", "model"), ("config_tp", "tp"),
                       ("config_cost_model", "cost model"), ("config_workload", "workload")):
        vals = _values(rows, key)
        if vals:
            parts.append(f"{label} {', '.join(vals)}")
    blocks = [_number(r.get("config_num_gpu_blocks")) for r in rows]
    sizes = [_number(r.get("config_block_size")) for r in rows]
    if all(b is not None for b in blocks) and all(s is not None for s in sizes):
        tokens = [b * s for b, s in zip(blocks, sizes)]
        parts.append(f"KV cache {_span(blocks)} blocks = {_span(tokens)} tokens")
    return "; ".join(parts)


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
    setup = html.escape(simulated_setup([r for r in rows if r.get("status") == "ok"]))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>apcsim sweep: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}}</style></head>
<body><h1>apcsim sweep</h1>
<p><b>{setup}</b></p>
<p>{html.escape(title)}: {len(rows)} jobs, {ok} with results; swept: {html.escape(', '.join(keys) or '-')}.
Lines are policies (<code>none</code>: caching off); a dashed line with open markers coincides with the
policy it names. Table: sweep.csv beside this page.</p>
{''.join(parts)}
{_failed_table(rows)}
</body></html>
"""
    Path(path).write_text(page)
    return len(figs)
