"""Recorded engine runs (engine.recorded): a validation run saved as a bundle, replayed on the
simulator side alone, gives back the live run's table; a changed cost model shows in the replay;
a bundle whose config or workload no longer rebuilds is refused."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydra")

from apcsim.cli.compose import compose_config  # noqa: E402
from apcsim.errors import ConfigError  # noqa: E402
from engine.profile import register_profile_config, run_profile  # noqa: E402
from engine.recorded import STEPS, _outside_package_trace, load_bundle, read_steps, replay  # noqa: E402
from engine.validate import register_validate_config, run_validation, write_validation  # noqa: E402
from tests.helpers import DATA, ROOT  # noqa: E402

COMMITTED = DATA / "recorded" / "tiny_cpu_shared_prefix_lru"
TINY = ["model=tiny", "device=cpu", "cpu_threads=1"]
RUN = ["hardware=cpu", "report.enabled=false", "+policy=lru", "block_size=16", "workload=shared_prefix",
       "workload.num_requests=8", "workload.input_tokens=64", "workload.output_tokens=8", "num_gpu_blocks=24",
       "scheduler.max_num_batched_tokens=64", "scheduler.max_num_seqs=4", "skip_quiet=false"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, object]:
    """(bundle, live outcome) of one offline tiny-model run on the CPU."""
    tmp = tmp_path_factory.mktemp("rec")
    register_profile_config()
    pcfg = compose_config([*TINY, "grid=small", "warmup=0", "repeats=2", f"out={tmp / 'tiny.csv'}"],
                          config_name="engine_profile")
    profile, _ = run_profile(pcfg, argv=["(test)"])
    register_validate_config()
    overrides = [*TINY, *RUN, f"profile={profile}", f"record={tmp / 'bundle'}"]
    cfg = compose_config(overrides, config_name="engine_validate")
    out = run_validation(cfg)
    write_validation(out, tmp / "run", cfg, overrides)
    return tmp / "bundle", out


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_bundle_is_small_and_self_contained(recorded):
    bundle, live = recorded
    names = {p.name for p in bundle.iterdir()}
    assert names == {"bundle.json", STEPS, "metrics.json", "requests.csv", "profile.csv", "profile.meta.json"}
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 200_000
    b = load_bundle(bundle)
    assert not any(o.startswith(("profile=", "record=", "device=", "cpu_threads=")) for o in b["overrides"])
    assert b["versions"]["torch"] == torch.__version__ and b["num_gpu_blocks"] == 24
    plans, times = read_steps(bundle, b["request_ids"])
    assert plans == live.plans and len(times) == live.engine.metrics["num_steps"]
    assert [t for t, _ in times] == sorted(t for t, _ in times) and all(d > 0 for _, d in times)
    assert sum(d for _, d in times) == pytest.approx(live.engine.collector.busy_time, rel=1e-6)
    with (bundle / "requests.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 8


def test_replay_gives_the_live_table(recorded):
    bundle, live = recorded
    out, _cfg = replay(bundle)
    assert json.loads(json.dumps(out.comparison)) == json.loads(json.dumps(live.comparison))
    d = out.info["decisions"]
    assert d["plans_identical"] is True and d["requests_differing"] == 0 and d["plans_compared"] == len(live.plans)
    assert _leaves(out.info["step_costs"]) == pytest.approx(_leaves(live.info["step_costs"]), rel=1e-6)
    assert out.info["step_costs"]["all"]["steps"] == len(live.plans)
    assert out.info["recorded"]["versions"]["torch"] == torch.__version__


def test_replay_against_another_profile_moves_only_the_times(recorded, tmp_path):
    """Every profiled time doubled: the simulator's step costs double, its decisions stay."""
    bundle, live = recorded
    rows = list(csv.DictReader((bundle / "profile.csv").open()))
    for r in rows:
        r["time_ms_median"] = repr(2 * float(r["time_ms_median"]))
    slow = tmp_path / "slow.csv"
    with slow.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out, _ = replay(bundle, profile=str(slow))
    base = live.info["step_costs"]["all"]
    assert out.info["step_costs"]["all"]["predicted_s"] == pytest.approx(2 * base["predicted_s"], rel=1e-6)
    assert out.info["step_costs"]["all"]["measured_s"] == pytest.approx(base["measured_s"])
    assert out.info["decisions"]["requests_differing"] == 0
    assert out.comparison["tpot_s.p50"]["sim"] == pytest.approx(2 * live.comparison["tpot_s.p50"]["sim"], rel=1e-6)


def test_replay_refuses_a_bundle_that_no_longer_rebuilds(recorded, tmp_path):
    bundle, _ = recorded
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    b = json.loads((changed / "bundle.json").read_text())
    b["config"]["scheduler"]["max_num_seqs"] = 5  # as if the default had changed since
    (changed / "bundle.json").write_text(json.dumps(b))
    with pytest.raises(ConfigError, match="scheduler.max_num_seqs"):
        replay(changed)
    b["config"]["scheduler"]["max_num_seqs"] = 4
    b["specs_sha256"] = "0" * 64
    (changed / "bundle.json").write_text(json.dumps(b))
    with pytest.raises(ConfigError, match="workload built from the recorded config"):
        replay(changed)
    with pytest.raises(ConfigError, match="not a recorded run"):
        replay(tmp_path)


def test_trace_outside_the_package_travels_in_the_bundle(tmp_path):
    outside = tmp_path / "t.jsonl"
    outside.write_text("{}\n")
    assert _outside_package_trace(SimpleNamespace(workload=SimpleNamespace(path=str(outside)))) == outside.resolve()
    inside = SimpleNamespace(workload=SimpleNamespace(path="mooncake/synthetic_trace.jsonl"))
    assert _outside_package_trace(inside) is None
    assert _outside_package_trace(SimpleNamespace(workload=SimpleNamespace())) is None


def test_committed_bundle_replays_with_the_same_decisions(tmp_path):
    """The bundle under tests/data/recorded (recorded on the CPU, offline): re-run through the CLI.
    Offline, decisions do not depend on times, so the simulator must plan every recorded step.
    If the scheduler changes on purpose, record it again (see tests/data/recorded/README.md)."""
    run_dir = tmp_path / "replay"
    p = subprocess.run([sys.executable, "-m", "engine.validate", f"recorded={COMMITTED}", f"hydra.run.dir={run_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "metrics within" in p.stdout and "decode steps" in p.stdout
    v = json.loads((run_dir / "validation.json").read_text())
    info = json.loads((run_dir / "validation_info.json").read_text())
    assert set(v) == set(load_bundle(COMMITTED)["validation"])
    assert info["decisions"]["plans_identical"] is True and info["decisions"]["requests_differing"] == 0
    for name in ("prefix_cache_hit_rate", "prompt_tokens_computed", "num_preemptions"):
        assert v[name]["error_pct"] == 0.0, (name, v[name])
    with gzip.open(COMMITTED / STEPS, "rt") as f:
        assert info["step_costs"]["all"]["steps"] == sum(1 for _ in f)
    assert (run_dir / "validation.html").is_file() and (run_dir / "sim" / "metrics.json").is_file()


def test_replay_takes_no_other_override(tmp_path):
    p = subprocess.run([sys.executable, "-m", "engine.validate", f"recorded={COMMITTED}", "block_size=32",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "block_size=32" in p.stderr, p.stderr
