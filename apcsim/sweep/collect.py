"""Collect a Hydra multirun into one table: a row per job, its overrides, its metrics and its
status (`ok`, `failed` with the error, `interrupted` (Ctrl-C or kill; partial outputs), `crashed`,
or `incomplete`: a job that never finished writing).

Read by the multirun callback (`apcsim.sweep.callback`), by `python -m apcsim.sweep`
(`apcsim/sweep/__main__.py`) and by the HTML report (`apcsim.sweep.report`), which imports the key
helpers from here and nothing the other way round.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from apcsim.outputs.status import STATUS_FILE, effective_status, read_status

# Overrides that name the preset or switch outputs; they do not distinguish grid points.
_IGNORED = {"experiment", "report.enabled", "hydra.sweep.dir", "hydra.run.dir"}


def parse_overrides(lines: list[str]) -> dict[str, str]:
    out = {}
    for item in lines:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key not in _IGNORED:
            out[key] = value
    return out


def flatten(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}_" if k != "config" else "config_"))
        elif isinstance(v, list):
            continue  # a per-item breakdown (a cluster's replicas) stays in metrics.json
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_job_dir(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in ("metrics.json", STATUS_FILE, ".hydra/overrides.yaml"))


def collect(sweep_dir: Path) -> list[dict]:
    """One dict per job directory, in job-number order: `job`, the overrides, `status`, then
    either the flattened metrics (ok) or `error` (failed)."""

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory {sweep_dir}")
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if is_job_dir(p)),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for job in jobs:
        has_metrics = (job / "metrics.json").is_file()
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row = {"job": job.name, **parse_overrides(overrides or [])}
        st = read_status(job)
        if st is not None and st.get("status") == "failed":
            row.update(status="failed", error=st.get("error", ""))
        elif st is not None and st.get("status") == "interrupted":
            # Partial metrics of a cut-short run are not comparable with finished jobs' metrics.
            row.update(status="interrupted", error=st.get("error") or "interrupted")
        elif effective_status(st) == "crashed":
            row.update(status="crashed", error=f"the job's process (pid {st.get('pid')}) died without finishing; "
                       "its outputs are partial")
        elif has_metrics and (st is None or st.get("status") == "ok"):
            # No status.json: written before jobs recorded one; metrics.json alone means done.
            row.update(status="ok", error="")
            row.update(flatten(json.loads((job / "metrics.json").read_text())))
        else:
            row.update(status="incomplete", error="the job did not finish (killed, or still running)")
        rows.append(row)
    return rows


def override_keys(row: dict) -> list[str]:
    """A row's override keys: those between `job` and `status` (see `collect`)."""
    keys = list(row)
    return keys[1: keys.index("status")] if "status" in keys else keys[1:]


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys that take more than one value across the jobs (every key if none does)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in override_keys(r) if k not in keys]
    varying = [k for k in keys if len({str(r.get(k, "")) for r in rows}) > 1]
    return varying or keys


def write_csv(rows: list[dict], path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
