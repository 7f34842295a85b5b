"""`bench/gpu_session.sh --dry-run PHASE` prints the commands a GPU session would run: every
script and module it names exists, and a bad phase is a usage error (exit 2)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": "/tmp/gpu_session_dry"}
    return subprocess.run(["bash", "bench/gpu_session.sh", "--dry-run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [["check"], ["profile"], ["validate", "1/4"]])
def test_dry_run_names_only_what_exists(args):
    p = _dry(*args)
    assert p.returncode == 0, p.stderr
    cmds = [shlex.split(line[2:]) for line in p.stderr.splitlines() if line.startswith("+ ")]
    assert cmds
    for cmd in cmds:
        if cmd[0] != "python3":
            continue
        if cmd[1] == "-m":
            assert importlib.util.find_spec(cmd[2]) is not None, cmd
            if cmd[2] == "pytest":
                assert all((ROOT / t).is_file() for t in cmd[3:] if t.startswith("tests/")), cmd
        else:
            assert (ROOT / cmd[1]).is_file(), cmd
    if args[0] == "validate":
        assert any("shard=1/4" in c for cmd in cmds for c in cmd)


def test_bad_phase_is_a_usage_error():
    assert _dry("nope").returncode == 2
    assert _dry("validate").returncode != 0  # a shard is required
