"""Helpers for the sweep tests: run `python -m apcsim` as a user would, from a temp directory."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

# Small enough for a job in well under a second: 12 requests of 256 + 8 tokens.
TINY = ["workload.num_requests=12", "workload.input_tokens=256", "workload.output_tokens=8",
        "workload.shared_fraction=0.5"]


def apcsim(cwd: Path, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    e.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "apcsim", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=timeout)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
