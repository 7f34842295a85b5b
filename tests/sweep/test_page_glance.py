"""Sweep and report pages read at a glance: shared colour scales with colour bars, coinciding
lines marked, hit-rate axes from 0, the simulated setup in the header, the title once, units in
the metrics table, plotly.js once per page (or linked from the CDN)."""

from __future__ import annotations

from apcsim.cli.compose import compose_config
from apcsim.outputs.report import write_report
from apcsim.run import simulate
from apcsim.sweep.report import coinciding, heatmap_figure, line_figure, simulated_setup, write_sweep_html


def _rows():
    rows = []
    for policy, hit in (("lru", 0.5), ("lfu", 0.6), ("fifo", 0.5)):
        for bs in (16, 32):
            for nb in (512, 1024):
                rows.append({"policy": policy, "block_size": bs, "num_gpu_blocks": nb, "status": "ok",
                             "prefix_cache_hit_rate": hit * bs / 16 * nb / 1024, "output_throughput_tok_s": 100.0,
                             "ttft_s_p99": 2.0 / hit, "config_hardware": "h100", "config_model": "llama3_70b",
                             "config_tp": 4, "config_cost_model": "roofline(h100, llama3_70b, tp=4)",
                             "config_workload": "rag", "config_num_gpu_blocks": nb, "config_block_size": bs})
    return rows


def test_coinciding_lines_are_named_and_drawn_apart():
    assert coinciding({"a": [1], "b": [2], "c": [1], "d": [1]}) == {"c": "a", "d": "a"}
    fig = line_figure(_rows(), "block_size", ["num_gpu_blocks"])
    names = {t.name for t in fig.data}
    assert names == {"lru", "lfu", "fifo (= lru)"}
    fifo = [t for t in fig.data if t.name == "fifo (= lru)"]
    assert all(t.line.dash == "dash" and t.marker.symbol == "circle-open" for t in fifo)
    assert fig.layout.yaxis.rangemode == "tozero"  # the hit-rate column


def test_heatmaps_share_one_colour_scale_per_metric_with_colour_bars():
    fig = heatmap_figure(_rows(), "block_size", "num_gpu_blocks", [])
    assert {t.coloraxis for t in fig.data} == {"coloraxis", "coloraxis2"}
    hit, ttft = fig.layout.coloraxis, fig.layout.coloraxis2
    assert hit.cmin == 0 and hit.cmax == max(r["prefix_cache_hit_rate"] for r in _rows())
    assert ttft.cmin == 2.0 / 0.6 and ttft.cmax == 2.0 / 0.5
    assert hit.colorbar.title.text == "hit rate" and ttft.colorbar.title.text == "TTFT p99 (s)"
    assert hit.colorbar.x < ttft.colorbar.x


def test_sweep_header_names_the_setup_and_plotlyjs_once(tmp_path):
    rows = _rows()
    assert simulated_setup(rows) == ("hardware h100; model llama3_70b; tp 4; cost model roofline(h100, llama3_70b, tp=4); "
                                     "workload rag; KV cache 512 to 1,024 blocks = 8,192 to 32,768 tokens")
    page = tmp_path / "sweep.html"
    assert write_sweep_html(page, rows, title="t") == 3
    text = page.read_text()
    assert "KV cache 512 to 1,024 blocks = 8,192 to 32,768 tokens" in text
    assert text.count("Plotly=") <= 1 and text.count("plotly.js v") == 1  # the library once, for three figures
    write_sweep_html(page, rows, title="t", include_plotlyjs="cdn")
    text = page.read_text()
    assert "cdn.plot.ly" in text and "plotly.js v" not in text


def test_report_title_once_units_and_config(tmp_path):
    cfg = compose_config(["+policy=lru", "workload.num_requests=8", "workload.input_tokens=256",
                          "workload.output_tokens=8", "num_gpu_blocks=512"])
    out = simulate(cfg)
    page = tmp_path / "report.html"
    write_report(page, out.metrics, out.collector.log, out.collector.timeline)
    text = page.read_text()
    title = "apcsim: shared_prefix, policy=lru, block_size=16"
    assert text.count(title) == 2  # <title> and <h1>, not again over the figure
    assert "KV cache 512 blocks of 16 = 8,192 tokens" in text and "hardware a100" in text
    assert "<td>ttft_s</td>" in text and "<td>s</td>" in text and "<td>tokens/s</td>" in text
    assert text.count("plotly.js v") == 1
    write_report(page, out.metrics, out.collector.log, out.collector.timeline, include_plotlyjs="cdn")
    assert "cdn.plot.ly" in page.read_text() and "plotly.js v" not in page.read_text()
