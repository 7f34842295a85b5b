"""`bench/gpu_session.sh`: one device call, one time budget. Its dry run (stand-in commands, each
finished one charged its phase's estimated seconds) runs here: the schedule the budget allows,
timeouts that kill a phase without stopping the next, at most 8 result files and no folder in
the output, and every command the real session would run names what exists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_session


def _dry(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    env.pop("GPU_SESSION_T0", None)
    p = subprocess.run(["bash", "bench/gpu_session.sh", "--dry-run", "--out", str(tmp_path / "out"),
                        "--work", str(tmp_path / "work"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    session = json.loads((tmp_path / "out" / "session.json").read_text()) if (tmp_path / "out" / "session.json").is_file() else {}
    return p, session


def _by_phase(session: dict) -> dict:
    return {r["phase"]: r for r in session["phases"]}


def test_default_budget_schedule_and_files(tmp_path):
    p, s = _dry(tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    top = list(out.iterdir())
    assert len(top) <= gpu_session.MAX_FILES and all(f.is_file() for f in top)
    assert {f.name for f in top} == set(s["files"]) == {
        "session.json", "session.log", "summary.md", "engine_kernels.json", "engine_step.json", "profile.tar.gz",
        "validation.tar.gz"}
    ph = _by_phase(s)
    # The budget arithmetic: 510 s; the four phases' estimates (90 + 45 + 70 + 160 = 365 s) leave
    # 145 s: one 75 s validation run, then 70 s, less than any run needs.
    assert s["budget_s"] == 510 and s["complete"] is True
    for name in ("correctness", "kernels", "decode", "profile", "validate:shared_prefix_1k-lru-16"):
        assert ph[name]["status"] == "ok", ph[name]
    est = sum(p.estimate_s for p in gpu_session.PHASES)
    assert ph["validate:shared_prefix_1k-lru-16"]["left_before_s"] == pytest.approx(510 - est, abs=5)
    assert ph["validate:shared_prefix_1k-lru-16"]["timeout_s"] == ph["validate:shared_prefix_1k-lru-16"]["left_before_s"]
    assert ph["validate"]["status"] == "skipped" and "shortest" in ph["validate"]["reason"]
    assert "gmi-lru-16" not in ph["validate"]["runs"]  # its trace does not travel to the device
    for r in s["phases"]:
        if "timeout_s" in r:  # started: enough was left, and it may run for what is left, at most its cap
            assert r["left_before_s"] >= r["need_s"] and r["timeout_s"] == pytest.approx(min(r["cap_s"], r["left_before_s"]), abs=0.2)
    assert s["used_s"] <= s["budget_s"]
    # The table comes last, and in summary.md.
    assert p.stdout.rstrip().endswith((out / "summary.md").read_text().rstrip())
    assert "| validate:shared_prefix_1k-lru-16 | ok |" in p.stdout
    with tarfile.open(out / "validation.tar.gz") as t:
        names = t.getnames()
    assert "table.md" in names and "bundles/shared_prefix_1k-lru-16/bundle.json" in names
    with tarfile.open(out / "profile.tar.gz") as t:
        assert {"llama3_8b.csv", "llama3_8b.meta.json", "calibration/calibration.json"} <= set(t.getnames())


def test_a_small_budget_starts_only_what_fits(tmp_path):
    p, s = _dry(tmp_path, "--budget", "100")
    assert p.returncode == 0, p.stderr
    ph = _by_phase(s)
    assert ph["correctness"]["status"] == "ok"  # 100 s >= 45 s needed; then 90 s are charged
    for name in ("kernels", "decode", "profile"):
        assert ph[name]["status"] == "skipped" and "needed" in ph[name]["reason"], ph[name]
    assert ph["validate"]["status"] == "skipped"
    assert set(s["files"]) == {"session.json", "session.log", "summary.md"}
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_a_hung_phase_is_killed_and_the_next_ones_run(tmp_path):
    p, s = _dry(tmp_path, "--hang", "decode", "--cap", "decode=1", "--phases", "decode,profile,validate",
                "--runs", "rag-cost_aware-16")
    assert p.returncode == 0, p.stderr
    ph = _by_phase(s)
    assert ph["decode"]["status"] == "timeout" and ph["decode"]["wall_s"] < 10
    assert ph["profile"]["status"] == "ok" and ph["validate:rag-cost_aware-16"]["status"] == "ok"
    assert "engine_step.json" not in s["files"]
    assert "decode: timeout" in (tmp_path / "out" / "session.log").read_text()


def test_real_commands_name_what_exists(tmp_path):
    _, s = _dry(tmp_path, "--runs", "mooncake-lru-16", "--budget", "700")  # room for its 240 s
    suite_runs = gpu_session.suite_run_names()
    cmds = [c["command"] for r in s["phases"] for c in r.get("commands", [])]
    assert len(cmds) == 6  # pytest, two benchmarks, profile, calibration, one validation run
    for cmd in cmds:
        if cmd[1] == "-m":
            assert importlib.util.find_spec(cmd[2]) is not None, cmd
            if cmd[2] == "pytest":
                assert all((ROOT / t).is_file() for t in cmd if t.startswith("tests/")), cmd
            if cmd[2] == "engine.validate_suite":
                only = next(a for a in cmd if a.startswith("only="))
                assert only.removeprefix("only=") in suite_runs and any(a.startswith("record=") for a in cmd)
        else:
            assert (ROOT / cmd[1]).is_file(), cmd
    decode = next(c for c in cmds if "bench/engine_step.py" in c)
    assert decode[decode.index("--nominal-tbps") + 1] == "3.35"  # hardware/h100.yaml's bandwidth


def test_correctness_selection_leaves_out_what_breaks_on_the_device():
    """The interpreter test (refuses Triton 3.6 with NumPy 2.5) and the CLI tests (reset
    PYTHONPATH, losing the carried wheels) are not selected; the engine's other tests are."""
    s = gpu_session.Session(out=Path("."), work=Path("."), clock=gpu_session.Clock(1, 0, True), py=sys.executable,
                            dry=True, hardware="h100", device_name="-")
    argv = gpu_session.correctness_steps(s)[0][0]
    k = argv[argv.index("-k") + 1]
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "tests/engine/test_engine.py", "-k", k], cwd=ROOT, capture_output=True, text=True, timeout=120)
    ids = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert ids and not any("interpreter" in i or "cli" in i for i in ids), ids
    assert any("test_engine_matches_dense_reference" in i for i in ids)


def test_suite_names_match_the_suite_loader():
    pytest.importorskip("hydra")
    from engine.validate_suite import load_suite

    assert gpu_session.suite_run_names() == list(load_suite("h100"))
    assert set(gpu_session.VALIDATION_ORDER) <= set(load_suite("h100"))


def test_plan_start():
    assert gpu_session.plan_start(100, 45, 150) == (True, 100)
    assert gpu_session.plan_start(300, 45, 150) == (True, 150)
    assert gpu_session.plan_start(44.9, 45, 150) == (False, 0.0)


def test_bad_input_is_exit_2(tmp_path):
    p, _ = _dry(tmp_path, "--phases", "nope")
    assert p.returncode == 2 and "unknown phase" in p.stderr
    p, _ = _dry(tmp_path / "b", "--runs", "gmi-lru-99")
    assert p.returncode == 2 and "no run" in p.stderr
    (tmp_path / "c" / "out").mkdir(parents=True)
    (tmp_path / "c" / "out" / "old.json").write_text("{}")
    p, _ = _dry(tmp_path / "c")
    assert p.returncode == 2 and "not empty" in p.stderr


def test_wheel_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_wheels.sh")]).returncode == 0
