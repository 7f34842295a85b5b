"""A plain command line that ran before starts without Hydra (apcsim.cli.fast_run): its run
directory (every file, .hydra/ included), stdout, stderr and exit status must be what Hydra's
path gives, for runs that succeed and runs that fail; it must not import Hydra or OmegaConf;
and anything that is not plain, or an entry that cannot be read, goes through Hydra."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import omegaconf
import pytest

from apcsim.cli.fast_run import FastEntry, plain_run_dir
from apcsim.config import MISSING
from apcsim.outputs.rundir import hold, release
from tests.cli.test_compose_once import _files
from tests.helpers import ROOT
from tests.helpers.sweeptools import TINY

LINES = [
    ["+policy=lru", "block_size=16", *TINY],
    ["vllm=v0_6_3", "+policy=lfu", "seed=3", "++max_concurrency=4", "report.plotlyjs=cdn", *TINY],
    ["report.enabled=false", "scheduler=priority", *TINY],
    ["num_gpu_blocks=3", *TINY],  # fails in the run: status.json "failed", one line, exit 2
]
# Prints the modules a run imported (to stderr, after the run's own lines).
MODULES_AFTER_RUN = """
import json, runpy, sys
sys.argv = ["apcsim", *sys.argv[1:]]
try:
    runpy.run_module("apcsim", run_name="__main__")
finally:
    print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _run(cwd: Path, args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, set[str]]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    e.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, "-c", MODULES_AFTER_RUN, *args], capture_output=True, text=True, cwd=cwd,
                       env=e, timeout=300)
    err, _, modules = p.stderr.rpartition("MODULES ")
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout, err), set(json.loads(modules))


def _uses_hydra(modules: set[str]) -> bool:
    return any(m.split(".")[0] in ("hydra", "omegaconf") for m in modules)


@pytest.mark.parametrize("line", LINES, ids=" ".join)
def test_fast_run_is_hydras_run(tmp_path, line):
    """Hydra's own path (`--config-name config`), the plain line's first run (Hydra, which
    records the entry), and its next run from another directory into a relative run directory
    (no Hydra): the same files, bytes, lines and exit status."""
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = {"hydra": (tmp_path, f"{tmp_path}/hydra"), "first": (tmp_path, f"{tmp_path}/first"),
            "fast": (elsewhere, "fast/run")}
    out, dirs = {}, {}
    for name, (cwd, run_dir) in runs.items():
        flags = ["--config-name", "config"] if name == "hydra" else []
        p, modules = _run(cwd, [*flags, *line, f"hydra.run.dir={run_dir}"], env)
        assert _uses_hydra(modules) == (name != "fast"), name
        dirs[name] = cwd / run_dir
        out[name] = (p.returncode, p.stdout.replace(str(dirs[name]), "RUN_DIR"), p.stderr.replace(str(dirs[name]), "RUN_DIR"))
    assert len(list((tmp_path / "cache" / "fast").glob("*.pickle"))) == 1
    assert out["fast"] == out["first"] == out["hydra"]
    files = {name: _files(dirs[name], runs[name][0], as_dir=dirs["hydra"], as_cwd=tmp_path) for name in runs}
    # hydra.yaml names the run directory as given (relative for "fast"): put the absolute one back.
    files["fast"][".hydra/hydra.yaml"] = files["fast"][".hydra/hydra.yaml"].replace(
        "dir: fast/run\n", f"dir: {dirs['hydra']}\n").replace("hydra.run.dir=fast/run\n", f"hydra.run.dir={dirs['hydra']}\n")
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "main.log", "status.json"} <= set(files["hydra"])
    assert files["fast"] == files["first"] == files["hydra"]
    assert json.loads(files["fast"]["status.json"])["status"] == ("failed" if out["hydra"][0] else "ok")


def test_a_held_run_dir_stops_the_fast_run(tmp_path):
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["report.enabled=false", *TINY]
    assert _run(tmp_path, [*args, "hydra.run.dir=a/b"], env)[0].returncode == 0  # records the entry
    hold(tmp_path / "held")
    try:
        p, modules = _run(tmp_path, [*args, "hydra.run.dir=held/"], env)
    finally:
        release(tmp_path / "held")
    assert not _uses_hydra(modules)
    assert p.returncode == 2 and p.stderr == (f"apcsim: error: hydra.run.dir=held is in use by another run "
                                              f"(pid {os.getpid()}); wait for it to finish or pick another hydra.run.dir\n")


def test_an_unreadable_entry_goes_through_hydra_and_is_rewritten(tmp_path):
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["report.enabled=false", *TINY]
    assert _run(tmp_path, [*args, "hydra.run.dir=x/1"], env)[0].returncode == 0
    entry, = (tmp_path / "cache" / "fast").glob("*.pickle")
    entry.write_bytes(b"\x80\x05garbage")
    p, modules = _run(tmp_path, [*args, "hydra.run.dir=x/2"], env)
    assert p.returncode == 0 and _uses_hydra(modules)
    assert isinstance(pickle.loads(entry.read_bytes()), FastEntry)
    p, modules = _run(tmp_path, [*args, "hydra.run.dir=x/3"], env)
    assert p.returncode == 0 and not _uses_hydra(modules)


@pytest.mark.parametrize("args", [
    ["+policy=lru"],  # no run directory: Hydra names one after the time
    ["+policy=lru", "hydra.run.dir=out/a", "hydra.run.dir=out/b"],
    ["-m", "seed=1,2", "hydra.run.dir=out/a"],
    ["--cfg", "job", "hydra.run.dir=out/a"],
    ["hydra.job.chdir=true", "hydra.run.dir=out/a"],
    ["hydra/job_logging=disabled", "hydra.run.dir=out/a"],
    ["+hydra.foo=1", "hydra.run.dir=out/a"],
    ["hydra.run.dir=out"],  # no '/': YAML might read it as another type
    ["hydra.run.dir=out/with space"],
    ["hydra.run.dir=out/${now:%H}"],
    ["hydra.run.dir=---/x"],
    ["hydra.run.dir='out/a'"],
], ids=" ".join)
def test_what_is_not_plain_goes_through_hydra(args):
    assert plain_run_dir(args) is None


def test_plain_lines():
    assert plain_run_dir(["+policy=lru", "hydra.run.dir=out/a"]) == "out/a"
    assert plain_run_dir(["hydra.run.dir=/tmp/x.y/z-1_2/"]) == "/tmp/x.y/z-1_2/"


def test_missing_is_omegaconfs():
    assert MISSING == omegaconf.MISSING
