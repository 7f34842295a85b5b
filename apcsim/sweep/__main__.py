"""Rebuild a multirun's table (sweep.csv) and, with --html, its figures (sweep.html):

    python -m apcsim.sweep multirun/seed_overhead/2026-11-23_12-00-00 [--out table.csv] [--html]

A multirun of `python -m apcsim` writes `sweep.csv` and `sweep.html` by itself (the callback in
apcsim.sweep.callback); this command rebuilds them, e.g. after a sweep was interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from apcsim.errors import exit_bad_input
from apcsim.sweep.collect import collect, is_job_dir, write_csv

PROG = "apcsim.sweep"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="CSV path (default: SWEEP_DIR/sweep.csv)")
    ap.add_argument("--html", action="store_true", help="also write SWEEP_DIR/sweep.html (plotly)")
    args = ap.parse_args(argv)
    try:
        rows = collect(args.sweep_dir)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as e:
        exit_bad_input(PROG, str(e))
    if not rows and is_job_dir(args.sweep_dir):
        exit_bad_input(PROG, f"{args.sweep_dir} is one run's directory, not a sweep's: its outputs are there already; "
              "python -m apcsim.sweep takes a multirun directory (multirun/<date>/<time>), whose numbered "
              "subdirectories are the jobs")
    if not rows:
        exit_bad_input(PROG, f"no finished jobs (metrics.json) or failed jobs (status.json) under {args.sweep_dir}")
    out = args.out or args.sweep_dir / "sweep.csv"
    write_csv(rows, out)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{len(rows)} jobs ({ok} ok, {len(rows) - ok} failed or incomplete) -> {out}")
    if args.html:
        from apcsim.sweep.report import write_sweep_html

        write_sweep_html(args.sweep_dir / "sweep.html", rows, title=str(args.sweep_dir))
        print(f"-> {args.sweep_dir / 'sweep.html'}")


if __name__ == "__main__":
    main()
