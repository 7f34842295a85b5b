"""The files every run writes into its directory, simulated (`python -m apcsim`) or measured
(`python -m engine`): metrics.json, requests.csv, run_info.json, report.html and, last,
status.json."""

from __future__ import annotations

import json
import platform
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from apcsim.outputs.metrics import MetricsCollector, write_metrics
from apcsim.outputs.requestlog import write_rows_csv
from apcsim.outputs.rundir import write_text_atomic
from apcsim.outputs.status import write_status

if TYPE_CHECKING:  # the writers read a few keys of these; outputs/ imports neither at run time
    from apcsim.config import SimConfig
    from apcsim.run import SimOutcome


def write_run_files(run_dir: Path, cfg: SimConfig, metrics: dict, collector: MetricsCollector, run_info: dict,
                    *, status: str = "ok", error: str | None = None) -> None:
    """metrics.json, requests.csv (unless the run streamed it there already), run_info.json (the
    caller's fields plus status, peak RSS, Python and machine), report.html if enabled, and last
    status.json: the files every run writes, simulated or measured. Wall-clock figures go to
    run_info.json only, so metrics.json and requests.csv are byte-identical across runs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(run_dir / "metrics.json", metrics)
    log = collector.log
    if not log.streams:
        write_rows_csv(run_dir / "requests.csv", log.rows or [], log.fieldnames)
    run_info = {
        **run_info,
        "status": status,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    write_text_atomic(run_dir / "run_info.json", json.dumps(run_info, indent=2) + "\n")
    if cfg.report.enabled:
        from apcsim.outputs.report import write_report  # plotly: only when a report is wanted

        write_report(run_dir / "report.html", metrics, log, collector.timeline, include_plotlyjs=cfg.report.plotlyjs,
                     replica_timelines=getattr(collector, "replica_timelines", None))  # a cluster's
    write_status(run_dir, status, error)


def write_outputs(out: SimOutcome, run_dir: Path, cfg: SimConfig) -> None:
    n, done = out.simulation.num_requests, len(out.collector.log)
    error = None if out.interrupted is None else f"{out.interrupted}: {done} of {n} requests done"
    write_run_files(run_dir, cfg, out.metrics, out.collector, {
        "wall_s": out.wall_s,
        "simulated_requests_per_wall_s": done / out.wall_s if out.wall_s > 0 else None,
        **({"warnings": list(out.warnings)} if out.warnings else {}),
    }, status=out.status, error=error)
