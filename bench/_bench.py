"""What the simulator benchmarks share: running a case in a fresh interpreter (so its peak RSS is
its own), and the results document (command, date, machine) written to --out and echoed."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(code: str, overrides: list[str]) -> dict:
    """Run `code` with the overrides as its argv in a new interpreter; its last stdout line is a
    JSON object, returned. A failing case ends the benchmark with its stderr."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case failed: {' '.join(overrides)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe_run(machine_note: str = "") -> dict:
    """The command as typed from the repository root, today's date, the machine and Python."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs{machine_note}",
        "python": platform.python_version(),
    }


def write_results(doc: dict, out: str | None, *, echo: bool = True) -> None:
    text = json.dumps(doc, indent=2) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    if echo:
        print(text)
