"""One job of a multirun: simulate, write the outputs and a `status.json`, never end the sweep.

A sweep is many jobs in one process (basic launcher) or in workers (joblib, Ray, SLURM). A job
with bad input must not take the others down: its error goes to `status.json` and the log, and
the sweep report shows it as a row. A job whose directory already holds the results of the same
config (same fingerprint in status.json, metrics.json present) is not simulated again unless
`sweep.rerun=true`, so re-running a sweep into the same `hydra.sweep.dir` only fills gaps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from apcsim.config import SimConfig
from apcsim.errors import ApcsimError
from apcsim.outputs.status import read_status, write_running, write_status

log = logging.getLogger("apcsim")

# Keys that change how a job runs or reports, not what it computes.
_NOT_FINGERPRINTED = ("sweep", "progress", "tune")


def config_fingerprint(dcfg: DictConfig) -> str:
    """sha256 of the resolved config without the keys that do not change results."""
    data = OmegaConf.to_container(dcfg, resolve=True, enum_to_str=True)
    for key in _NOT_FINGERPRINTED:
        data.pop(key, None)
    if data.get("num_replicas", 1) == 1:  # a single engine: the cluster's keys change nothing
        for key in ("num_replicas", "router", "cluster_bound"):
            data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def reusable_metrics(job_dir: Path, fingerprint: str) -> dict | None:
    """The metrics of an earlier successful run of this very config in `job_dir`, else None."""
    st = read_status(job_dir)
    metrics = job_dir / "metrics.json"
    if st is None or st.get("status") != "ok" or st.get("config_sha256") != fingerprint or not metrics.is_file():
        return None
    try:
        return json.loads(metrics.read_text())
    except ValueError:
        return None


def objective(metrics: dict | None, cfg: SimConfig) -> float | None:
    """What an optimising sweeper minimises (see `TuneConfig`); None when not tuning."""
    t = cfg.tune
    if t is None:
        return None
    if metrics is None:
        return math.inf
    p99 = metrics["ttft_s"]["p99"]
    capacity = metrics["config"]["num_gpu_blocks"] * metrics["config"]["block_size"]
    if p99 is not None and p99 <= t.ttft_p99_target_s and metrics["num_rejected"] == 0:
        return float(capacity)
    ratio = math.inf if p99 is None else p99 / t.ttft_p99_target_s
    return float(t.max_capacity_tokens) * (1.0 + min(ratio, 1e6))


def run_multirun_job(dcfg: DictConfig, job_dir: Path) -> float | None:
    """Run one sweep job; failures are recorded, not raised. Returns the tuning objective."""
    import sys

    from apcsim.interrupt import RunInterrupted
    from apcsim.outputs.files import write_outputs
    from apcsim.outputs.metrics import summary_line
    from apcsim.run import simulate

    fingerprint = config_fingerprint(dcfg)
    cfg: SimConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
    if not cfg.sweep.rerun:
        old = reusable_metrics(job_dir, fingerprint)
        if old is not None:
            log.info("results of this config exist in %s: skipped (sweep.rerun=true runs it again)", job_dir)
            st = read_status(job_dir) or {}
            write_status(job_dir, **{**st, "reused": True})  # st has "status": "ok"
            return objective(old, cfg)
    # Replace an old status first: a job killed mid-run must not leave "ok" beside stale metrics;
    # "running" with this pid says whose partial files these are (a dead pid: a crash).
    write_running(job_dir)
    t0 = time.perf_counter()
    try:
        out = simulate(cfg, multirun=True, requests_csv=job_dir / "requests.csv")
        write_outputs(out, job_dir, cfg)
    except RunInterrupted as e:  # before the run started or while writing its outputs
        write_status(job_dir, "interrupted", str(e), config_sha256=fingerprint,
                      wall_s=time.perf_counter() - t0, reused=False)
        log.error("job interrupted (%s): the sweep stops here", e.signal_name)
        sys.exit(e.exit_code)
    except Exception as e:
        kind = "input" if isinstance(e, ApcsimError) else "bug"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.error("job failed (%s): %s", type(e).__name__, msg)
        write_status(job_dir, "failed", msg, error_type=type(e).__name__, error_kind=kind,
                      traceback=None if kind == "input" else traceback.format_exc(),
                      config_sha256=fingerprint, wall_s=time.perf_counter() - t0, reused=False)
        return objective(None, cfg)
    if out.interrupted is not None:
        # write_outputs marked the job interrupted with its partial results; no later job starts.
        log.error("job interrupted (%s) with partial outputs in %s: the sweep stops here",
                  out.interrupted.signal_name, job_dir)
        sys.exit(out.interrupted.exit_code)
    write_status(job_dir, "ok", None, config_sha256=fingerprint, wall_s=time.perf_counter() - t0, reused=False)
    log.info(summary_line(out.metrics, clock="simulated"))
    return objective(out.metrics, cfg)
