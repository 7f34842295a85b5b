"""The command line: config composition for every group, a real subprocess run, byte-identical
metrics, one-line errors, and golden metrics on small slices of the bundled traces."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apcsim.cli.compose import compose_config
from apcsim.config import SimConfig
from apcsim.hardware import HardwareConfig, ModelConfig
from apcsim.run import simulate
from apcsim.workloads import WORKLOADS
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from tests.helpers import GOLDEN, ROOT

CONF = ROOT / "apcsim" / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_is_typed_and_caching_is_off():
    cfg = compose_config([])
    assert isinstance(cfg, SimConfig)
    assert cfg.policy is None and cfg.scheduler.name == "fcfs" and cfg.workload.name == "shared_prefix"
    assert cfg.block_size == 16 and cfg.scheduler.chunked_prefill and cfg.scheduler.cache_aware_budget
    assert cfg.hardware.name == "a100" and cfg.model.name == "llama3_8b"


@pytest.mark.parametrize("name", sorted(EVICTION_POLICIES))
def test_compose_policy(name):
    cfg = compose_config([f"+policy={name}"])
    assert type(cfg.policy) is EVICTION_POLICIES[name].config_cls and cfg.policy.name == name


@pytest.mark.parametrize("name", sorted(SCHEDULING_POLICIES))
def test_compose_scheduler(name):
    cfg = compose_config([f"scheduler={name}", "scheduler.max_num_batched_tokens=4096", "scheduler.chunked_prefill=false"])
    assert type(cfg.scheduler) is SCHEDULING_POLICIES[name].config_cls
    assert cfg.scheduler.max_num_batched_tokens == 4096 and cfg.scheduler.chunked_prefill is False


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_compose_workload(name):
    cfg = compose_config([f"workload={name}", "workload.num_requests=7"])
    assert type(cfg.workload) is WORKLOADS[name].config_cls and cfg.workload.num_requests == 7


@pytest.mark.parametrize("group,schema", [("hardware", HardwareConfig), ("model", ModelConfig)])
def test_compose_presets(group, schema):
    names = _options(group)
    assert len(names) >= 2
    for name in names:
        node = getattr(compose_config([f"{group}={name}"]), group)
        assert isinstance(node, schema) and node.name == name


def test_wrong_type_is_rejected_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="block_size=sixteen") as e:
        compose_config(["block_size=sixteen"])
    assert "could not be converted to Integer" in str(e.value.__cause__)


def _cli(tmp_path: Path, *args: str, name: str = "run") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's apcsim, whatever is installed
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "apcsim", *args, f"hydra.run.dir={tmp_path / name}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_cli_run_outputs_and_determinism(tmp_path):
    args = ["workload=system_prompt", "max_concurrency=1", "+policy=lru", "block_size=8"]
    a = _cli(tmp_path, *args, name="a")
    assert a.returncode == 0, a.stderr
    out = tmp_path / "a"
    m = json.loads((out / "metrics.json").read_text())
    assert m["prompt_tokens_computed"] == 1150 and m["num_requests"] == 3 and m["num_rejected"] == 0
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(m[key]) >= {"mean", "p50", "p90", "p99"}
    lines = (out / "requests.csv").read_text().splitlines()
    assert len(lines) == 4 and "cached_tokens" in lines[0]
    assert "wall_s" in json.loads((out / "run_info.json").read_text())
    report = (out / "report.html").read_text()
    assert "plotly" in report.lower() and "TTFT" in report
    b = _cli(tmp_path, *args, "report.enabled=false", name="b")
    assert b.returncode == 0, b.stderr
    assert (out / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


@pytest.mark.parametrize("args,expect", [
    (["+policy=lur"], "available options in 'policy': " + ", ".join(sorted(EVICTION_POLICIES))),
    (["workload=nope"], "available options in 'workload': azure, mooncake"),
    (["block_size=abc"], "could not be converted to integer"),
    (["block_size=0"], "block_size must be >= 1"),
    (["workload=mooncake", "workload.path=missing.jsonl"], "trace file not found: missing.jsonl"),
    (["workload=mooncake", "workload.path=bad.jsonl"], "bad.jsonl, line 2: not valid json"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expect):
    (tmp_path / "bad.jsonl").write_text('{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1]}\n{oops\n')
    r = _cli(tmp_path, *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("apcsim: error: ") and expect in lines[0].lower()
    assert "Traceback" not in r.stderr


GOLDEN_CASES = {
    "mooncake100_lru": ["workload=mooncake", "workload.num_requests=100", "+policy=lru", "num_gpu_blocks=20000"],
    "mooncake100_cost_aware": ["workload=mooncake", "workload.num_requests=100", "+policy=cost_aware", "num_gpu_blocks=20000"],
    "azure300_priority": ["workload=azure", "workload.num_requests=300", "scheduler=priority", "+policy=lfu", "num_gpu_blocks=2000"],
}


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_metrics(case):
    """Pinned results on slices of the bundled traces: any change to the serving semantics, the
    cost model or the workload readers shows up here. Regenerate deliberately with
    APCSIM_UPDATE_GOLDEN=1 and explain the change in the commit."""
    m = simulate(compose_config(GOLDEN_CASES[case] + ["report.enabled=false"])).metrics
    m = json.loads(json.dumps(m))
    path = GOLDEN / f"{case}.json"
    if os.environ.get("APCSIM_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    _close(json.loads(path.read_text()), m)
    assert 0 <= m["prefix_cache_hits"] <= m["prefix_cache_queries"]
    assert m["num_finished"] + m["num_rejected"] == m["num_requests"]
