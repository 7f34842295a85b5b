"""report.html's main figure is written from a plain dict (apcsim.outputs.report_dict) in a cached
page shell (apcsim.outputs.plotly_html) instead of plotly's graph objects and to_html: the dict,
and so the page, must be what plotly makes of the same figure (`build_figure` here), key order included, with and
without priority classes, timelines and thinned arrays, with either JSON engine and either way
of including plotly.js; the cached layout and shell must be plotly's, and a corrupt cache entry
is made again."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from plotly.io.json import to_json_plotly

from apcsim.cli.compose import compose_config
from apcsim.outputs import report_dict
from apcsim.outputs.plotly_html import figure_html_bytes, plotly_json
from apcsim.outputs.report import layout_figure, write_report
from apcsim.outputs.report_dict import SERIES, cdf, thin
from apcsim.run import simulate

RUNS = {
    "plain": ["+policy=lru", "block_size=16", "workload.num_requests=10"],
    "no_prefix_cache": ["workload.num_requests=7"],
    "classes": ["+experiment=priority_classes", "workload.num_conversations=12"],
    "azure_thinned": ["workload=azure", "workload.num_requests=700", "+policy=lfu", "num_gpu_blocks=2000"],
}


def build_figure(log, timeline):
    """The reference: report.html's main figure built with plotly's graph objects, from the
    same per-request columns and timeline (a priority class's CDFs after the whole run's, which
    then share one legend entry)."""
    import plotly.graph_objects as go

    c = log.columns()
    fig = layout_figure(log.by_class)
    for col, key, name in ((1, "ttft", "TTFT"), (2, "e2e", "E2E")):
        x, y = cdf(c[key][c["finished"]])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name), row=1, col=col)
    if log.by_class:
        fig.data[0].name = fig.data[1].name = "all requests"
        fig.data[1].showlegend = False
        for k in sorted(range(len(log.class_names)), key=lambda k: (log.class_priority[k], log.class_names[k])):
            ok = c["finished"] & (c["class_index"] == k)
            name = f"{log.class_names[k]} (priority {log.class_priority[k]})"
            for col, key in ((1, "ttft"), (2, "e2e")):
                x, y = cdf(c[key][ok])
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=name, showlegend=col == 1),
                              row=1, col=col)
    t = timeline.as_arrays()
    if len(t["time"]):
        for key, row, col in SERIES:
            xs, ys = thin(t["time"], t[key])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key, line_shape="hv"), row=row, col=col)
    return fig


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCSIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "report"


@pytest.fixture(scope="module")
def outcomes():
    return {name: simulate(compose_config(args + ["report.enabled=false"])) for name, args in RUNS.items()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_figure_dict_is_plotlys(outcomes, name, cache):
    out = outcomes[name]
    log, timeline = out.collector.log, out.collector.timeline
    want = to_json_plotly(build_figure(log, timeline).to_dict())
    assert to_json_plotly(report_dict.figure_dict(log, timeline)) == want  # layout made by plotly, then cached
    assert len(list(cache.glob("layout-*.json"))) == 1
    assert to_json_plotly(report_dict.figure_dict(log, timeline)) == want  # layout from the cache
    if name == "classes":
        assert log.by_class
    if name == "azure_thinned":
        assert len(timeline.as_arrays()["time"]) > report_dict._MAX_POINTS


def test_report_page_is_plotlys(outcomes, tmp_path):
    """The whole page, against the page plotly's own to_html writes (the div id is random)."""
    out = outcomes["classes"]
    path = tmp_path / "report.html"
    write_report(path, out.metrics, out.collector.log, out.collector.timeline)
    fig_html = build_figure(out.collector.log, out.collector.timeline).to_html(full_html=False, include_plotlyjs=True)
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    page = uuid.sub("ID", path.read_text())
    assert uuid.sub("ID", fig_html) in page
    assert page.index("<h1>") < page.index('class="plotly-graph-div"') < page.index("<h2>Metrics</h2>")


def test_corrupt_layout_entry_is_made_again(outcomes, cache):
    out = outcomes["plain"]
    want = to_json_plotly(build_figure(out.collector.log, out.collector.timeline).to_dict())
    report_dict.figure_dict(out.collector.log, out.collector.timeline)
    entry, = cache.glob("layout-*.json")
    entry.write_text('{"xaxis": ')
    assert to_json_plotly(report_dict.figure_dict(out.collector.log, out.collector.timeline)) == want


@pytest.mark.parametrize("values", [np.array([3, -100, 7]), np.array([1 << 20, 5]), np.array([1 << 40]),
                                    np.array([0.5, 2.25]), np.array([], dtype=np.int64)])
def test_typed_arrays_as_plotly_encodes_them(values):
    from _plotly_utils.utils import to_typed_array_spec

    got, want = report_dict.typed_array(values), to_typed_array_spec(values)
    assert to_json_plotly(got) == to_json_plotly(want)


DATA = [{"name": "a/b <c> \u2028 d", "x": np.array([], dtype=np.float64), "y": [1, 2.5, None], "type": "scatter"},
        {"x": report_dict.typed_array(np.array([1, 2, 3])), "legendgroup": "é", "showlegend": False}]


@pytest.mark.parametrize("engine", ["orjson", "json"])
def test_data_json_is_plotlys(engine, monkeypatch):
    if engine == "json":
        monkeypatch.setitem(sys.modules, "orjson", None)  # not installed: both fall back to json
    assert plotly_json(DATA) == to_json_plotly(DATA, engine=engine if engine == "json" else "auto")


@pytest.mark.parametrize("include", [True, "cdn"])
def test_figure_html_is_plotlys_and_its_shell_is_cached(outcomes, cache, include):
    out = outcomes["plain"]
    fig = report_dict.figure_dict(out.collector.log, out.collector.timeline)
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    want = uuid.sub("ID", build_figure(out.collector.log, out.collector.timeline).to_html(full_html=False,
                                                                                     include_plotlyjs=include))
    first = figure_html_bytes(fig, include).decode("utf-8")
    assert uuid.sub("ID", first) == want
    shell, = cache.glob("shell-*.html")
    second = figure_html_bytes(fig, include).decode("utf-8")
    assert uuid.sub("ID", second) == want and second != first  # a fresh div id each time
    shell.write_text("truncated")
    assert uuid.sub("ID", figure_html_bytes(fig, include).decode("utf-8")) == want
    assert shell.read_text() != "truncated"
