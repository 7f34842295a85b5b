"""The reports as a user sees them: report.html and sweep.html opened in headless Chromium;
every plotly figure must render, with no script error. Skipped (with the reason) where no
Chromium is installed; `.ci/run` installs Debian's when it can."""

from __future__ import annotations

import pytest

from tests.helpers.headless_chromium import find_chromium, open_page
from tests.helpers.sweeptools import TINY, apcsim

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two numeric keys (a heatmap too), one job's report.html kept."""
    tmp = tmp_path_factory.mktemp("render")
    sweep = tmp / "s"
    p = apcsim(tmp, "-m", "+policy=none,lru", "block_size=16,32", "num_gpu_blocks=64,256", *TINY,
               "report.enabled=true", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    return sweep


def test_report_html_renders_every_figure(sweep_dir):
    page = open_page(CHROMIUM, sweep_dir / "7" / "report.html")
    assert page.errors == []
    assert page.figures >= 1 and page.rendered == page.figures


def test_sweep_html_renders_every_figure(sweep_dir):
    page = open_page(CHROMIUM, sweep_dir / "sweep.html")
    assert page.errors == []
    assert page.figures == 3 and page.rendered == 3  # against block_size, num_gpu_blocks; heatmap


def test_a_broken_page_is_caught(tmp_path):
    """The check can fail: a figure whose script throws is reported, not counted as rendered."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><div class="plotly-graph-div"></div><script>undefinedFunction()</script></body></html>')
    page = open_page(CHROMIUM, bad)
    assert page.figures == 1 and page.rendered == 0
    assert any("undefinedFunction" in e for e in page.errors)
