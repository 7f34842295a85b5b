"""A plain run composes its config once (apcsim.cli.compose_once) instead of Hydra's twice: the
config it runs must be the one Hydra's own path runs, over many command lines; a multirun, a
failing composition or any other Hydra flag must go through Hydra; the files a run writes must be
the same bytes either way; and a plain run must not import plotly, scipy, torch or (its config
cached) Hydra's plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from apcsim.cli.compose_once import compose_for_run
from apcsim.cli.main import CONFIG_NAME
from tests.helpers import ROOT
from tests.helpers.hydra_app import make_hydra
from tests.helpers.sweeptools import TINY, apcsim

RUNS_ONCE = [
    [],
    ["+policy=lru", "block_size=16", "workload.num_requests=10"],
    ["workload=azure", "workload.num_requests=300", "scheduler=priority", "+policy=lfu", "num_gpu_blocks=2000"],
    ["workload=mooncake", "+policy=cost_aware", "num_gpu_blocks=20000"],
    ["hardware=h100", "model=llama3_70b", "tp=4", "cost_model=roofline"],
    ["vllm=v0_6_3", "+policy=lru", "seed=3", "++max_concurrency=4"],
    ["num_replicas=2", "router=round_robin", "report.plotlyjs=cdn"],
    ["hydra.run.dir=/tmp/somewhere", "hydra.job.chdir=true", "hydra.output_subdir=null"],
    ["hydra.mode=RUN", "+policy=lru"],  # the mode set explicitly: nothing appended
    ["+experiment=policy_zoo", "hydra.mode=RUN"],  # a multirun preset turned back into a run
    ["workload.num_requests=5", "~router"],
]
# Hydra's path, not the single composition: a multirun preset, a sweep without -m, bad input.
NOT_ONCE = [
    ["+experiment=policy_zoo"],
    ["+experiment=priority_classes", "workload.num_conversations=4"],
    ["seed=1,2"],
    ["block_size=abc"],
    ["+policy=no_such_policy"],
    ["no_such_key=1"],
    ["hydra.verbose=true"],
]


@pytest.fixture
def hydra():
    yield make_hydra()[0]
    GlobalHydra.instance().clear()


def hydras_run_config(hydra: Hydra, overrides: list[str]):
    """What hydra.main (1.3) hands Hydra.run: mode from a first composition, then composes again."""
    mode = hydra.get_mode(config_name=CONFIG_NAME, overrides=overrides)
    if mode == RunMode.MULTIRUN:
        return None
    if mode is None:
        overrides = [*overrides, "hydra.mode=RUN"]
    try:
        return hydra.compose_config(config_name=CONFIG_NAME, overrides=overrides, run_mode=RunMode.RUN)
    except Exception:
        return None


@pytest.mark.parametrize("overrides", RUNS_ONCE, ids=" ".join)
def test_composed_once_is_hydras_config(hydra, overrides):
    want = hydras_run_config(hydra, list(overrides))
    got = compose_for_run(hydra, CONFIG_NAME, list(overrides))
    assert want is not None and got is not None
    assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(want)
    assert got.hydra.mode == RunMode.RUN and list(got.hydra.overrides.hydra) == list(want.hydra.overrides.hydra)
    assert OmegaConf.is_struct(got) and OmegaConf.is_struct(want)


@pytest.mark.parametrize("overrides", NOT_ONCE, ids=" ".join)
def test_multiruns_and_errors_go_through_hydra(hydra, overrides):
    assert compose_for_run(hydra, CONFIG_NAME, list(overrides)) is None


def _files(run_dir, cwd, *, as_dir, as_cwd):
    """Every file of a run, its own directory and working directory renamed (they are in
    hydra.yaml), report.html's random plot id masked."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name not in ("run_info.json", ".apcsim.lock"):  # wall time, pid
            text = p.read_text().replace(str(run_dir), str(as_dir)).replace(f"cwd: {cwd}\n", f"cwd: {as_cwd}\n")
            out[str(p.relative_to(run_dir))] = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "ID", text)
    return out


def test_run_files_are_hydras(tmp_path):
    """`--config-name config` (the same config) takes Hydra's own path: same files, same bytes;
    so does a run whose config comes from the compose cache, from another directory."""
    args = ["+policy=lru", "block_size=16", *TINY]
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = {"composed": elsewhere, "cached": tmp_path, "hydra": tmp_path}
    for name, cwd in runs.items():
        flags = ["--config-name", "config"] if name == "hydra" else []
        p = apcsim(cwd, *flags, *args, f"hydra.run.dir={tmp_path / name}", env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.endswith(f"outputs in {tmp_path / name}\n")
    assert len(list((tmp_path / "cache" / "compose").glob("*.pickle"))) == 1
    files = {name: _files(tmp_path / name, cwd, as_dir=tmp_path / "hydra", as_cwd=tmp_path) for name, cwd in runs.items()}
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "report.html"} <= set(files["hydra"])
    assert files["composed"] == files["hydra"]
    assert files["cached"] == files["hydra"]


# A plain run with warm caches imports no plotly at all (its report is a cached shell plus JSON).
HEAVY = ("plotly", "_plotly_utils", "narwhals", "scipy", "torch", "triton", "pandas")
MODULES_AFTER_RUN = """
import json, runpy, sys
sys.argv = ["apcsim", *sys.argv[1:]]
try:
    runpy.run_module("apcsim", run_name="__main__")
finally:
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def test_plain_run_imports_no_heavy_modules(tmp_path):
    env = {**os.environ, "APCSIM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    loaded = []
    for k in range(2):  # the first run makes the cached report layout (with plotly), the second uses it
        p = subprocess.run([sys.executable, "-c", MODULES_AFTER_RUN, "+policy=lru", *TINY, f"hydra.run.dir={tmp_path}/{k}"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert (tmp_path / str(k) / "report.html").stat().st_size > 1_000_000
        loaded.append(set(json.loads(p.stderr.strip().splitlines()[-1])))
    assert "plotly.graph_objs._figure" in loaded[0]  # the check can see plotly's figure classes
    heavy = sorted(m for m in loaded[1] if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []
    # The second run's config came from the compose cache: Hydra did not scan (import) its plugins.
    assert not any(m.startswith("hydra_plugins.") for m in loaded[1])

