"""`bench/engine_step.py --smoke` runs on the CPU and prints the JSON the GPU run will fill
(every code path: decode roofline cases, caching overhead and gain against the ideal)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("hydra")

from tests.helpers import ROOT

DECODE_CASE_KEYS = {"batch", "context", "mode", "step_s", "prepare_s", "weight_bytes", "kv_bytes", "roofline_s", "ratio",
                    "roofline_nominal_s", "ratio_vs_nominal", "goal_max_ratio", "goal_met"}
RUN_KEYS = {"policy", "num_gpu_blocks", "duration_s", "output_tokens", "output_throughput_tok_s", "prompt_tokens",
            "prompt_tokens_computed", "prefix_cache_hit_rate", "num_preemptions", "num_steps", "prefill", "wall_s"}


def test_engine_step_smoke(tmp_path):
    out = tmp_path / "engine_step.json"
    proc = subprocess.run([sys.executable, "bench/engine_step.py", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert json.loads(proc.stdout) == res and res["complete"] is True
    assert {"bench", "date_utc", "command", "device", "torch", "triton", "smoke"} <= res.keys()
    assert res["smoke"] is True and res["device"] != "" and "--smoke" in res["command"]

    dec = res["decode"]
    assert {"model", "dtype", "attention_backend", "block_size", "copy", "nominal_tbps", "cases"} <= dec.keys()
    assert dec["copy"]["tb_per_s"] > 0
    assert dec["cases"] and all(c.keys() == DECODE_CASE_KEYS for c in dec["cases"])
    assert all(c["step_s"] > 0 and c["ratio"] > 0 for c in dec["cases"])
    assert {c["mode"] for c in dec["cases"]} == {"padded", "eager"}  # the graph path, side by side with eager
    with_goal = [c for c in dec["cases"] if c["goal_max_ratio"] is not None]
    assert with_goal and all(isinstance(c["goal_met"], bool) for c in with_goal)  # batch 1, context 1,024

    cach = res["caching"]
    none_shared, shared = cach["no_sharing"], cach["sharing"]
    for case in (none_shared, shared):
        for side in ("off", "on"):
            runs = case["runs"][side]
            assert runs and all(r.keys() == RUN_KEYS for r in runs)
            for r in runs:
                # The steps' wall times sum to the run's duration: the attribution covers all of it.
                assert r["prefill"]["steps_wall_s"] == pytest.approx(r["duration_s"], rel=1e-9)
                assert r["prefill"]["tokens"] == r["prompt_tokens_computed"]
                assert r["num_gpu_blocks"] == cach["num_gpu_blocks"]
        assert {r["policy"] for r in case["runs"]["on"]} == {"lru"}
        assert {r["policy"] for r in case["runs"]["off"]} == {"none"}
    assert {"throughput_ratio_on_off", "loss", "goal_max_loss", "goal_met"} <= none_shared.keys()
    assert none_shared["runs"]["on"][0]["prefix_cache_hit_rate"] == 0.0
    assert {"measured_gain", "skipped_prompt_tokens", "ideal_duration_s", "ideal_gain", "gain_fraction_of_ideal",
            "goal_min_fraction", "goal_met"} <= shared.keys()
    assert shared["skipped_prompt_tokens"] > 0 and shared["ideal_gain"] > 0


def test_out_is_written_as_results_come(tmp_path):
    """A run stopped after its first decode case (a time limit, say) leaves that case in --out."""
    out = tmp_path / "partial.json"
    code = (
        "import runpy, sys\n"
        "mod = runpy.run_path('bench/engine_step.py', run_name='engine_step')\n"
        "calls = []\n"
        "real = mod['decode_case']\n"
        "def once(*a, **k):\n"
        "    if calls: raise KeyboardInterrupt('stopped')\n"
        "    calls.append(1); return real(*a, **k)\n"
        "mod['main'].__globals__['decode_case'] = once\n"
        "try:\n"
        f"    mod['main'](['--smoke', '--parts', 'decode', '--out', {str(out)!r}])\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["smoke"] is True
    assert len(res["decode"]["cases"]) == 1 and res["decode"]["cases"][0].keys() == DECODE_CASE_KEYS
    assert not (tmp_path / "partial.json.tmp").exists()
