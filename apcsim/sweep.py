"""Collect a Hydra multirun into one table: a row per job, its overrides and its metrics.

    python -m apcsim.sweep multirun/seed_overhead/2026-11-23_12-00-00 [--out table.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

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
        else:
            out[f"{prefix}{k}"] = v
    return out


def collect(sweep_dir: Path) -> list[dict]:
    """One dict per finished job (a directory with metrics.json), in job-number order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory {sweep_dir}")
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row = {"job": job.name, **parse_overrides(overrides or [])}
        row.update(flatten(json.loads((job / "metrics.json").read_text())))
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="CSV path (default: SWEEP_DIR/sweep.csv)")
    args = ap.parse_args(argv)
    try:
        rows = collect(args.sweep_dir)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as e:
        sys.exit(f"apcsim.sweep: error: {e}")
    if not rows:
        sys.exit(f"apcsim.sweep: error: no finished jobs (metrics.json) under {args.sweep_dir}")
    out = args.out or args.sweep_dir / "sweep.csv"
    write_csv(rows, out)
    print(f"{len(rows)} jobs -> {out}")


if __name__ == "__main__":
    main()
