"""Runs that must not lose or invent results: byte-identical outputs whatever the launcher or job
order, Ctrl-C/kill during a run or a sweep (finished jobs intact, the interrupted one marked),
and bounded memory (finished requests are released, not kept)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from apcsim.cli.compose import compose_config
from apcsim.core import request as request_mod
from apcsim.outputs.files import write_outputs
from apcsim.run import simulate
from tests.helpers import ROOT

BASE = ["workload=shared_prefix", "workload.num_requests=30", "workload.input_tokens=96",
        "workload.output_tokens=12", "num_gpu_blocks=60", "report.enabled=false"]
SMALL = BASE + ["+policy=lru"]
# Long enough to be interrupted mid-run (~10 s of simulation at ~20k requests/s), quick to start.
LONG_BASE = ["workload=shared_prefix", "workload.input_tokens=32", "workload.output_tokens=8", "+policy=lru",
             "report.enabled=false"]
LONG = LONG_BASE + ["workload.num_requests=300000"]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _apcsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apcsim", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=300)


def _outputs(d: Path) -> tuple[bytes, bytes]:
    return (d / "metrics.json").read_bytes(), (d / "requests.csv").read_bytes()


# -- determinism ---------------------------------------------------------------------------------
def test_in_process_runs_are_byte_identical(tmp_path):
    for name in ("a", "b"):
        cfg = compose_config(SMALL)
        out = simulate(cfg, requests_csv=(tmp_path / name).mkdir() or tmp_path / name / "requests.csv")
        write_outputs(out, tmp_path / name, cfg)
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert "wall_s" in info and "wall_s" not in (tmp_path / "a" / "metrics.json").read_text()
    assert json.loads((tmp_path / "a" / "status.json").read_text()) == {"status": "ok", "error": None}


@pytest.mark.slow
def test_multirun_job_order_and_launcher_do_not_change_outputs(tmp_path):
    """The same grid point gives the same bytes in a single run and in a basic-launcher multirun,
    whichever order the sweep visits the points (state left behind by one job must not leak
    into the next one in the same process)."""
    fwd = _apcsim("-m", *BASE, "block_size=8,16", "+policy=lru,lfu", f"hydra.sweep.dir={tmp_path / 'fwd'}",
                  cwd=tmp_path)
    assert fwd.returncode == 0, fwd.stderr
    rev = _apcsim("-m", *BASE, "block_size=16,8", "+policy=lfu,lru", f"hydra.sweep.dir={tmp_path / 'rev'}",
                  cwd=tmp_path)
    assert rev.returncode == 0, rev.stderr
    single = _apcsim(*BASE, "block_size=16", "+policy=lfu", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr

    def by_point(sweep: Path) -> dict:
        out = {}
        for job in sweep.iterdir():
            if job.is_dir() and job.name.isdigit():
                m = json.loads((job / "metrics.json").read_text())["config"]
                out[(m["block_size"], m["policy"])] = _outputs(job)
                assert json.loads((job / "status.json").read_text())["status"] == "ok"
        return out

    a, b = by_point(tmp_path / "fwd"), by_point(tmp_path / "rev")
    assert len(a) == 4 and a == b
    assert a[(16, "lfu")] == _outputs(tmp_path / "one")


# -- interruption --------------------------------------------------------------------------------
def _wait_for_rows(csv_path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run has flushed some requests.csv rows (so it is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if csv_path.is_file() and csv_path.read_bytes().count(b"\n") > 1:
            return
        time.sleep(0.05)
    raise AssertionError("the run never got going")


def _check_interrupted(run_dir: Path, signame: str) -> int:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and signame in status["error"]
    assert json.loads((run_dir / "run_info.json").read_text())["status"] == "interrupted"
    m = json.loads((run_dir / "metrics.json").read_text())
    with (run_dir / "requests.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    done = m["num_finished"] + m["num_rejected"]
    assert 0 < done < m["num_requests"] and m["num_unfinished"] == m["num_requests"] - done
    assert len(rows) == done and all(r["finish_s"] for r in rows), "every row of a finished request, complete"
    assert m["busy_fraction"] <= 1.0 + 1e-9
    return done


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_keeps_partial_results(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "apcsim", *LONG, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(run_dir / "requests.csv.partial", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted by {sig.name}" in err
    _check_interrupted(run_dir, sig.name)


@pytest.mark.slow
def test_interrupted_sweep_keeps_finished_jobs_and_marks_the_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "apcsim", "-m", *LONG_BASE, "workload.num_requests=40,300000,41",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(sweep / "1" / "requests.csv.partial", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    status0 = json.loads((sweep / "0" / "status.json").read_text())
    assert (status0["status"], status0["error"]) == ("ok", None)
    m0 = json.loads((sweep / "0" / "metrics.json").read_text())
    assert m0["num_finished"] == 40 and "num_unfinished" not in m0
    assert len((sweep / "0" / "requests.csv").read_text().splitlines()) == 41
    _check_interrupted(sweep / "1", "SIGINT")
    assert not (sweep / "2").exists(), "a sweep stops at Ctrl-C: no job after the interrupted one"


def test_failed_run_writes_status(tmp_path):
    r = _apcsim("workload.num_requests=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["status"] == "failed" and "num_requests must be an integer >= 1" in status["error"]


# -- bounded memory ------------------------------------------------------------------------------
def test_finished_requests_are_released(monkeypatch):
    """With keep_requests=False (the default of simulate) a Request lives only while in flight:
    the number alive at any step stays near max_concurrency, not the number finished."""
    alive: weakref.WeakSet = weakref.WeakSet()
    real = request_mod.Request

    class Tracked(real):  # type: ignore[misc, valid-type]
        def __post_init__(self) -> None:
            super().__post_init__()
            alive.add(self)

    import apcsim.loop as loop_mod

    monkeypatch.setattr(loop_mod, "Request", Tracked)
    peak = 0
    from apcsim.loop import ServingLoop

    orig_complete = ServingLoop.complete

    def complete_keep(self, plan, now, duration):
        nonlocal peak
        res = orig_complete(self, plan, now, duration)
        peak = max(peak, len(alive) - len(res.finished))  # the step's finished ones go with `res`
        return res

    monkeypatch.setattr(ServingLoop, "complete", complete_keep)
    out = simulate(compose_config(["workload=shared_prefix", "workload.num_requests=600", "workload.input_tokens=64",
                                   "workload.output_tokens=8", "+policy=lru", "max_concurrency=8",
                                   "report.enabled=false"]))
    assert out.metrics["num_finished"] == 600 and out.simulation.requests is None
    assert len(out.collector.log) == 600 and len(out.collector.log.rows) == 600
    # In flight (<= 8) plus finished ones still named by a stale entry of the scheduler's event
    # heaps, which pops within a block's worth of steps: bounded by the concurrency, not by N.
    assert 0 < peak <= 3 * 8, f"{peak} requests alive at once of 600 (max_concurrency=8)"


# -- one run per directory -----------------------------------------------------------------------
def test_a_second_run_into_a_held_dir_stops_and_a_killed_run_is_identifiable(tmp_path):
    """Run A holds its directory; run B into it stops at once (exit 2, A's pid) and leaves A's
    files alone; after kill -9 of A, status.json still says "running" with A's pid (so a dead pid
    reads as "crashed"), the rows are in requests.csv.partial, not in a requests.csv that looks
    complete, and the next run may use the directory (the kernel dropped the lock)."""
    from apcsim.outputs.status import effective_status, read_status

    run_dir = tmp_path / "run"
    a = subprocess.Popen([sys.executable, "-m", "apcsim", *LONG, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(run_dir / "requests.csv.partial", a)
        b = _apcsim(*BASE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert b.returncode == 2, b.stderr
        assert b.stderr.strip() == (f"apcsim: error: hydra.run.dir={run_dir} is in use by another run (pid {a.pid}); "
                                    "wait for it to finish or pick another hydra.run.dir")
        assert yaml_overrides(run_dir) == LONG, "B wrote nothing there"
        st = read_status(run_dir)
        assert (st["status"], st["pid"], effective_status(st)) == ("running", a.pid, "running")
    finally:
        a.kill()  # SIGKILL: no handler runs
        a.communicate(timeout=60)
    st = read_status(run_dir)
    assert (st["status"], st["pid"], effective_status(st)) == ("running", a.pid, "crashed")
    assert (run_dir / "requests.csv.partial").is_file() and not (run_dir / "requests.csv").exists()
    assert not (run_dir / "metrics.json").exists()
    c = _apcsim(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    assert read_status(run_dir)["status"] == "ok" and (run_dir / "requests.csv").is_file()
    assert len((run_dir / "requests.csv").read_text().splitlines()) == 31


def yaml_overrides(run_dir: Path) -> list[str]:
    import yaml

    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


def test_two_runs_with_default_dirs_started_together_do_not_share_one(tmp_path):
    """Default run directories are <date>/<time>-<pid>: two runs started in the same second (as
    these two nearly always are) get one each, each with its own complete outputs."""
    procs = [subprocess.Popen([sys.executable, "-m", "apcsim", *BASE, f"seed={seed}"], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    dirs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(dirs) == 2, dirs
    assert {d.name.rsplit("-", 1)[1] for d in dirs} == {str(p.pid) for p in procs}
    for d in dirs:
        seed = json.loads((d / "metrics.json").read_text())["config"]["seed"]
        assert f"seed={seed}" in yaml_overrides(d), "each directory's config and results are one run's"
        assert len((d / "requests.csv").read_text().splitlines()) == 31
        assert json.loads((d / "status.json").read_text())["status"] == "ok"


def test_sweep_lists_a_job_whose_process_died_as_crashed(tmp_path):
    """A job dir left with status "running" by a process that no longer exists is a crash, not a
    run in progress (the pid of a finished child is free, and not reused this soon)."""
    from apcsim.outputs.status import write_running
    from apcsim.sweep.collect import collect

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = tmp_path / "0"
    write_running(job)
    st = json.loads((job / "status.json").read_text())
    (job / "status.json").write_text(json.dumps({**st, "pid": dead.pid}))
    (job / "requests.csv.partial").write_text("request_id\n")
    (row,) = collect(tmp_path)
    assert row["status"] == "crashed" and f"pid {dead.pid}" in row["error"]
