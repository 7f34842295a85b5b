"""`status.json`: how a run or sweep job ended, the one file a reader checks before trusting the
others. Shape: {"status": "ok" | "failed" | "interrupted", "error": message or null, **extra}
(a sweep job adds its config fingerprint and wall time, see `apcsim.job`)."""

from __future__ import annotations

import json
from pathlib import Path

STATUS_FILE = "status.json"
STATUSES = ("ok", "failed", "interrupted")


def write_status(run_dir: Path, status: str, error: str | None = None, **extra) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps({"status": status, "error": error, **extra}) + "\n")
    tmp.replace(run_dir / STATUS_FILE)  # atomic: a reader never sees half a file


def read_status(run_dir: Path) -> dict | None:
    """The status of `run_dir`, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
