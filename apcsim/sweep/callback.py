"""The Hydra callback that turns a finished multirun into `sweep.csv` and `sweep.html`.

Configured in conf/config.yaml (`hydra.callbacks.sweep_report`), so every multirun of
`python -m apcsim` gets both files in its sweep directory, whatever the launcher (basic, joblib,
Ray, SLURM) or sweeper (basic, Optuna): it reads the job directories, not the launcher's results.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from apcsim.errors import JobsFailed
from apcsim.sweep.collect import collect, write_csv

log = logging.getLogger("apcsim")


class SweepReportCallback(Callback):
    def __init__(self, html: bool = True) -> None:
        self.html = html

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = collect(sweep_dir)
        except FileNotFoundError:
            log.warning("no sweep directory %s: no sweep.csv written", sweep_dir)
            return
        if not rows:
            log.warning("no job results under %s: no sweep.csv written", sweep_dir)
            return
        write_csv(rows, sweep_dir / "sweep.csv")
        failed = sum(r["status"] != "ok" for r in rows)
        msg = f"sweep: {len(rows)} jobs, {failed} failed -> {sweep_dir / 'sweep.csv'}"
        if self.html:
            from apcsim.sweep.report import write_sweep_html

            plotlyjs = config.get("report", {}).get("plotlyjs", "inline")
            write_sweep_html(sweep_dir / "sweep.html", rows, title=str(sweep_dir), include_plotlyjs=plotlyjs)
            msg += " and sweep.html"
        log.info(msg)
        if failed and config.get("sweep", {}).get("fail_on_error", True):
            # After the reports: every job ran and its result is kept; only the exit status says it.
            print(f"apcsim: {failed} of {len(rows)} jobs failed (status and error in {sweep_dir / 'sweep.csv'}); "
                  "exit status 1 (sweep.fail_on_error=false: 0)", file=sys.stderr)
            raise JobsFailed()
