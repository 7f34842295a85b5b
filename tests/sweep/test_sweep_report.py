"""Sweeps as users run them: a multirun ends with sweep.csv and sweep.html (a row per job, failed
jobs with their error, the others kept), re-running skips finished jobs unless told not to, the
figures follow the swept keys, joblib runs jobs in parallel, and the progress bar obeys
`progress`."""

from __future__ import annotations

import json
import re

import pytest

from apcsim.cli.compose import compose_config
from apcsim.outputs.progress import Progress, wants_bar
from apcsim.sweep.collect import collect, swept_keys
from apcsim.sweep.report import build_figures, write_sweep_html
from tests.helpers.sweeptools import TINY, apcsim, read_csv


def test_failed_job_is_a_row_and_rerun_skips_only_finished_jobs(tmp_path):
    sweep = tmp_path / "s"
    args = ["-m", "+policy=none,lru", "num_gpu_blocks=0,64", *TINY, "report.enabled=false", f"hydra.sweep.dir={sweep}"]
    p = apcsim(tmp_path, *args)
    # Every job ran and both reports are written, but a failed job makes the multirun exit 1.
    assert p.returncode == 1, p.stderr[-2000:]
    assert "apcsim: 2 of 4 jobs failed" in p.stderr and "Traceback" not in p.stderr
    rows = read_csv(sweep / "sweep.csv")
    assert [(r["policy"], r["num_gpu_blocks"], r["status"]) for r in rows] == [
        ("none", "0", "failed"), ("none", "64", "ok"), ("lru", "0", "failed"), ("lru", "64", "ok")]
    assert rows[0]["error"] == "num_gpu_blocks must be >= 1, got 0"
    assert float(rows[3]["prefix_cache_hit_rate"]) > 0.3 and rows[1]["prefix_cache_hit_rate"] == "0.0"
    assert rows[3]["ttft_s_p99"] and rows[3]["output_throughput_tok_s"]
    st = json.loads((sweep / "0" / "status.json").read_text())
    assert st["status"] == "failed" and st["error_type"] == "ConfigError"
    html = (sweep / "sweep.html").read_text()
    assert html.count('class="plotly-graph-div"') == 1  # only num_gpu_blocks=64 succeeded: one key left
    assert "2 job(s) without results" in html and "num_gpu_blocks must be &gt;= 1, got 0" in html

    ok_metrics = sweep / "3" / "metrics.json"
    before = ok_metrics.stat().st_mtime_ns
    again = apcsim(tmp_path, *args, "sweep.fail_on_error=false")
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert len(re.findall(r"skipped \(sweep.rerun=true", log)) == 2  # the two ok jobs; the failed ones ran again
    assert ok_metrics.stat().st_mtime_ns == before
    assert json.loads((sweep / "3" / "status.json").read_text())["reused"] is True

    forced = apcsim(tmp_path, *args, "sweep.rerun=true")
    assert forced.returncode == 1 and "skipped" not in forced.stdout + forced.stderr
    assert ok_metrics.stat().st_mtime_ns != before


def test_changed_config_in_the_same_job_dir_is_not_reused(tmp_path):
    sweep = tmp_path / "s"
    base = ["-m", "+policy=lru", *TINY, "report.enabled=false", f"hydra.sweep.dir={sweep}"]
    assert apcsim(tmp_path, *base, "block_size=16").returncode == 0
    p = apcsim(tmp_path, *base, "block_size=32")  # job 0 again, another config
    assert p.returncode == 0 and "skipped" not in p.stdout + p.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["config"]["block_size"] == 32


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "s"
    p = apcsim(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+policy=none,lru", *TINY,
               "report.enabled=false", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    rows = read_csv(sweep / "sweep.csv")
    assert [(r["policy"], r["status"]) for r in rows] == [("none", "ok"), ("lru", "ok")]
    assert float(rows[1]["prefix_cache_hit_rate"]) > float(rows[0]["prefix_cache_hit_rate"]) == 0.0
    assert (sweep / "sweep.html").is_file()


def _row(policy, bs, n, hit, tput, ttft, status="ok"):
    return {"job": "0", "policy": policy, "block_size": str(bs), "num_gpu_blocks": str(n), "status": status,
            "error": "", "prefix_cache_hit_rate": hit, "output_throughput_tok_s": tput, "ttft_s_p99": ttft}


def test_figures_follow_the_swept_keys_and_two_numeric_keys_get_a_heatmap(tmp_path):
    rows = [_row(p, bs, n, 0.1 * i, 100.0 + i, 1.0 / (i + 1))
            for i, (p, bs, n) in enumerate((p, bs, n) for p in ("lru", "lfu") for bs in (16, 32) for n in (64, 1024))]
    assert swept_keys(rows) == ["policy", "block_size", "num_gpu_blocks"]
    figs = build_figures(rows)
    kinds = [[t.type for t in f.data] for f in figs]
    assert kinds[0] == ["scatter"] * 6 and kinds[1] == ["scatter"] * 6  # 3 metrics x 2 policies, per key
    assert kinds[2] == ["heatmap"] * 4  # 2 policies x (hit rate, TTFT p99)
    assert "mean over num_gpu_blocks" in figs[0].layout.annotations[0].text
    assert figs[1].layout.xaxis.type == "log"  # 64..1024 blocks: a wide numeric range
    lru_hit = figs[0].data[0]
    assert list(lru_hit.x) == [16.0, 32.0] and lru_hit.y[0] == pytest.approx((0.0 + 0.1) / 2)
    n = write_sweep_html(tmp_path / "s.html", rows, title="t", include_plotlyjs="cdn")
    assert n == 3 and (tmp_path / "s.html").read_text().count('class="plotly-graph-div"') == 3


def test_policy_only_sweep_plots_against_policy_and_no_ok_job_gives_no_figure():
    rows = [_row("none", 16, 64, 0.0, 10.0, 1.0), _row("lru", 16, 64, 0.5, 20.0, 0.5)]
    figs = build_figures(rows)
    assert len(figs) == 1 and [list(t.x) for t in figs[0].data[:1]] == [["none"]]
    assert build_figures([{**r, "status": "failed"} for r in rows]) == []


def test_collect_marks_a_job_that_never_finished(tmp_path):
    job = tmp_path / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text("- +policy=lru\n")
    rows = collect(tmp_path)
    assert rows[0]["status"] == "incomplete" and rows[0]["policy"] == "lru"


def test_progress_config_is_typed():
    assert compose_config(["progress=off"]).progress is Progress.off
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(["progress=sometimes"])


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("mode,multirun,tty,want", [
    (Progress.auto, False, True, True), (Progress.auto, False, False, False), (Progress.auto, True, True, False),
    (Progress.on, True, False, True), (Progress.off, False, True, False)])
def test_progress_bar_shows_only_where_it_helps(mode, multirun, tty, want):
    assert wants_bar(mode, multirun=multirun, stream=_Stream(tty)) is want


def test_progress_bar_counts_every_request(tmp_path):
    on = apcsim(tmp_path, "+policy=lru", *TINY, "report.enabled=false", "progress=on", f"hydra.run.dir={tmp_path / 'a'}")
    assert on.returncode == 0, on.stderr
    assert re.search(r"simulated requests: 100%\|.*\| 12/12", on.stderr), on.stderr
    auto = apcsim(tmp_path, "+policy=lru", *TINY, "report.enabled=false", f"hydra.run.dir={tmp_path / 'b'}")
    assert auto.returncode == 0 and "simulated requests" not in auto.stderr  # not a terminal
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
