"""The presets and plugins that make sweeps scale: the capacity curve, Optuna tuning, Ray (a real
local head on loopback, started and stopped by the test) and SLURM through submitit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from apcsim.cli.compose import compose_config
from apcsim.config import register_configs
from tests.helpers.sweeptools import ROOT, TINY, apcsim, read_csv

EXPERIMENTS = ROOT / "apcsim" / "conf" / "experiment"


def _hydra_cfg(overrides: list[str]):
    """The full config, hydra node included (what the launcher and sweeper are given)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="apcsim.conf", version_base=None):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_capacity_curve_preset_is_a_log_grid_per_policy():
    cfg = _hydra_cfg(["+experiment=capacity_curve"])
    params = cfg.hydra.sweeper.params
    sizes = [int(x) for x in params["num_gpu_blocks"].split(",")]
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:])) and len(sizes) >= 5
    assert "none" in params["+policy"] and "lru" in params["+policy"]
    assert compose_config(["+experiment=capacity_curve", "+policy=lru", f"num_gpu_blocks={sizes[0]}"]).workload.name == "multiturn"


def test_capacity_curve_runs_small_and_plots_against_capacity_on_a_log_axis(tmp_path):
    sweep = tmp_path / "cc"
    p = apcsim(tmp_path, "+experiment=capacity_curve", "+policy=lru", "num_gpu_blocks=80,160,640",
               "workload.num_conversations=6", "workload.turns=2", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_csv(sweep / "sweep.csv")
    assert [r["num_gpu_blocks"] for r in rows] == ["80", "160", "640"] and {r["status"] for r in rows} == {"ok"}
    hits = [float(r["prefix_cache_hit_rate"]) for r in rows]
    assert hits == sorted(hits) and hits[-1] > hits[0]  # more cache, more reuse on multiturn chat
    html = (sweep / "sweep.html").read_text()
    assert '"type":"log"' in html.replace(" ", "") and "num_gpu_blocks" in html


def test_optuna_sweeper_minimises_the_tuning_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[tune]'")
    sweep = tmp_path / "tune"
    p = apcsim(tmp_path, "+experiment=tune_capacity", "hydra.sweeper.n_trials=4",
               "workload.num_conversations=6", "workload.turns=2", "tune.ttft_p99_target_s=5",
               f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = read_csv(sweep / "sweep.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}

    def objective(r):
        cap = int(r["num_gpu_blocks"]) * int(r["block_size"])
        feasible = float(r["ttft_s_p99"]) <= 5 and r["num_rejected"] == "0"
        return cap if feasible else 1048576 * (1 + float(r["ttft_s_p99"]) / 5)

    assert best["best_value"] == pytest.approx(min(objective(r) for r in rows))
    assert set(best["best_params"]) == {"+policy", "block_size", "num_gpu_blocks"}


def test_submitit_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    cfg = _hydra_cfg(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=cpu",
                      "hydra.launcher.timeout_min=30", "hydra.launcher.cpus_per_task=1"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "cpu" and launcher.timeout_min == 30


def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    """submitit's local executor: the SLURM launcher's code path (pickled job, submitit folder,
    result files) with processes on this machine instead of sbatch."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    sweep = tmp_path / "s"
    p = apcsim(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "+policy=none,lru",
               *TINY, "report.enabled=false", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (sweep / ".submitit").is_dir()
    rows = read_csv(sweep / "sweep.csv")
    assert [(r["policy"], r["status"]) for r in rows] == [("none", "ok"), ("lru", "ok")]


def test_ray_cluster_launcher_config_reads_ray_address(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[ray]'")
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    from omegaconf import OmegaConf

    init = OmegaConf.to_container(_hydra_cfg(["hydra/launcher=ray_cluster"]).hydra.launcher.ray.init, resolve=True)
    assert init == {"address": "10.1.2.3:6379", "object_store_memory": None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on loopback, in its own process group so that teardown stops exactly it."""
    pytest.importorskip("ray", reason="pip install -e '.[ray]' (Ray could not be imported)")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    port = _free_port()
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray on 127.0.0.1: otherwise it replaces a loopback
    # --node-ip-address with the machine's own address.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(tmp_path / "ray_head.log", "w")
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    ray_tmp = tempfile.mkdtemp(prefix="apcsim-ray-")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={ray_tmp}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "This command will now block" not in (tmp_path / "ray_head.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray head did not start:\n" + (tmp_path / "ray_head.log").read_text()[-3000:])
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_ray_launcher_runs_a_sweep_on_a_local_head(tmp_path, ray_head):
    address, env = ray_head
    sweep = tmp_path / "s"
    p = apcsim(tmp_path, "-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}",
               "+policy=none,lru", *TINY, "report.enabled=false", f"hydra.sweep.dir={sweep}", env=env, timeout=400)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert f"Connecting to existing Ray cluster at address: {address}" in out
    assert "_run_job pid=" in out  # the jobs ran in Ray workers
    rows = read_csv(sweep / "sweep.csv")
    assert [(r["policy"], r["status"]) for r in rows] == [("none", "ok"), ("lru", "ok")]
    assert json.loads((sweep / "1" / "metrics.json").read_text())["prefix_cache_hit_rate"] > 0.3
