"""`status.json`: how a run or sweep job ended, the one file a reader checks before trusting the
others. Shape: {"status": "running" | "ok" | "failed" | "interrupted", "error": message or null,
**extra} (a sweep job adds its config fingerprint and wall time, see `apcsim.sweep.job`).

A run writes "running" with its pid and host before it writes anything else, and replaces it
when it ends. So a run killed outright (kill -9, out of memory, power) is still identifiable:
"running" whose pid is gone from this host is a crash (`effective_status` says "crashed"), and
its files are partial (requests.csv is then still `requests.csv.partial`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STATUS_FILE = "status.json"
STATUSES = ("running", "ok", "failed", "interrupted")


def write_status(run_dir: Path, status: str, error: str | None = None, **extra) -> None:
    from apcsim.outputs.rundir import write_text_atomic

    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / STATUS_FILE, json.dumps({"status": status, "error": error, **extra}) + "\n")


def write_running(run_dir: Path, **extra) -> None:
    """Mark a run started by this process (see the module doc)."""
    write_status(run_dir, "running", None, pid=os.getpid(), host=socket.gethostname(),
                 started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)


def read_status(run_dir: Path) -> dict | None:
    """The status of `run_dir`, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def effective_status(st: dict | None) -> str | None:
    """The status, with "running" turned into "crashed" when its process is gone from this host
    (on another host it cannot be checked and stays "running")."""
    if st is None:
        return None
    status = st.get("status")
    if status == "running" and st.get("host") == socket.gethostname() and isinstance(st.get("pid"), int):
        if not _pid_alive(st["pid"]):
            return "crashed"
    return status
