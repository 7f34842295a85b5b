"""`python -m apcsim --help` / `list`: the important keys and every registered or shipped option."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

from apcsim.config import register_configs
from apcsim.workloads import WORKLOADS
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES


def test_help_lists_keys_and_every_registered_option():
    r = subprocess.run([sys.executable, "-m", "apcsim", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    register_configs()
    conf = Path(str(resources.files("apcsim.conf")))
    sections = {
        "policies (+policy=)": EVICTION_POLICIES, "schedulers (scheduler=)": SCHEDULING_POLICIES,
        "workloads (workload=)": WORKLOADS,
        "hardware (hardware=)": [p.stem for p in conf.glob("hardware/*.yaml")],
        "models (model=)": [p.stem for p in conf.glob("model/*.yaml")],
        "experiment presets (+experiment=)": [p.stem for p in conf.glob("experiment/*.yaml")],
    }
    blocks = {b.splitlines()[0].rstrip(":"): b.splitlines()[1:] for b in out.split("\n\n")}
    for title, names in sections.items():
        listed = [ln.split()[0] for ln in blocks[title]]
        assert sorted(listed) == sorted(names), title
        assert all(len(ln.split()) > 1 for ln in blocks[title] if title != "experiment presets"), title
    keys = [ln.split()[0] for ln in blocks["keys [default]"]]
    for key in ("block_size", "num_gpu_blocks", "tp", "cost_model", "profile", "report.plotlyjs", "hardware=NAME"):
        assert key in keys
    assert "[16]" in out and "[a100]" in out  # defaults read from the config
    r2 = subprocess.run([sys.executable, "-m", "apcsim", "list"], capture_output=True, text=True, timeout=60)
    assert r2.stdout == out
