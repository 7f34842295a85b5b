"""Decision parity with the real vLLM 0.32 (marker `vllm`): every scenario of the matrix is
replayed in apcsim and through vLLM's own Scheduler and KV cache manager and must be identical
step by step. Negative controls prove the comparison can fail: each release-dependent knob,
switched off on apcsim's side only, makes a scenario differ at a pinned step.

The vLLM venv is built on first use if missing (`apcsim.parity.venv.setup`, ~3 minutes); if it
cannot be built, these tests fail with the reason. They never skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apcsim.parity.compare import compare
from apcsim.parity.harness import record_case, replay_all
from apcsim.parity.scenarios import SCENARIOS
from apcsim.parity.table import markdown, requests_alike
from apcsim.parity.venv import VllmUnavailable, check, setup, vllm_python
from tests.helpers import ROOT

# (name, overrides, vLLM config forced on the vLLM side, the step where the logs must part)
NEGATIVE = [
    ("null_block_off", [*SCENARIOS["shared_prefix_eviction"], "cache.null_block=false"], {}, 17),
    ("keyless_first_off", [*SCENARIOS["multiturn_small_cache"], "cache.free_keyless_first=false"], {}, 39),
    ("solo_cap_kept", [*SCENARIOS["seed_example_long_prefill_solo"], "scheduler.long_prefill_solo_uncapped=false"], {}, 0),
    # apcsim admits on the first chunk; vLLM keeps its default full-sequence gate.
    ("full_sequence_gate_off", [*SCENARIOS["small_token_budget"], "scheduler.reserve_full_sequence=false"],
     {"scheduler_reserve_full_isl": True}, 15),
]


@pytest.fixture(scope="module")
def vllm() -> Path:
    python = vllm_python()
    try:
        check(python)
    except VllmUnavailable as first:
        try:
            python = setup()
        except VllmUnavailable as e:
            pytest.fail(f"vLLM is not available and could not be installed: {e} (first: {first})")
    return python


@pytest.fixture(scope="module")
def replays(vllm):
    """Every scenario and negative control, replayed in one vLLM process (importing vLLM takes
    seconds; the whole matrix replays in about a minute)."""
    cases = list(SCENARIOS.items()) + [(n, ov) for n, ov, _, _ in NEGATIVE]
    done = replay_all(cases, vllm, vllm_settings={n: force for n, _, force, _ in NEGATIVE})
    return {r.name: (r.recording, r.vllm, r.comparison) for r in done}


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_is_step_identical_to_vllm(replays, name):
    rec, res, cmp = replays[name]
    assert res["vllm_version"] == "0.32.0"
    assert cmp.identical, f"{name}: differs from step {cmp.first_diff}: {cmp.diff}"
    assert cmp.apcsim.steps > 0 and not rec.rejected, "a scenario must run, and every request must be replayed"


@pytest.mark.vllm
def test_matrix_covers_what_it_claims(replays):
    """The matrix exercises hits, evictions, preemptions, every block size it names."""
    sides = [replays[n][2].vllm for n in SCENARIOS]
    assert sum(s.hits for s in sides) > 0 and sum(s.preemptions for s in sides) >= 10
    assert sum(replays[n][2].vllm.preemptions > 0 for n in SCENARIOS) >= 6
    sizes = {replays[n][0].config["block_size"] for n in SCENARIOS}
    assert {8, 16, 32, 64} <= sizes
    assert {replays[n][0].config["policy"] for n in SCENARIOS} == {"fcfs", "priority"}
    mixed = [n for n in SCENARIOS if len({r["priority"] for r in replays[n][0].requests.values()}) > 1]
    assert mixed and any(replays[n][2].vllm.preemptions > 0 for n in mixed), "mixed priorities with preemption"


@pytest.mark.vllm
@pytest.mark.parametrize("name,overrides,force,step", NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_a_knob_off_on_one_side_is_caught(replays, name, overrides, force, step):
    _, _, cmp = replays[name]
    assert not cmp.identical, f"{name}: the knob made no difference, the comparison proves nothing"
    if step is not None:
        assert cmp.first_diff == step, cmp.diff


@pytest.mark.vllm
def test_cli_writes_the_table_and_step_logs(vllm, tmp_path):
    r = subprocess.run([sys.executable, "-m", "apcsim.parity", "--scenarios", "seed_example_bs8,rag",
                        "--vllm-python", str(vllm), "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "| seed_example_bs8 | vllm-0.32 | 3 | 96 | 3150 | 2000 | 0.6349 | 0 | 3/3 | yes |" in r.stdout
    logs = [json.loads(line) for line in (tmp_path / "rag.vllm.jsonl").read_text().splitlines()]
    assert len(logs) == 160 and set(logs[0]) == {"step", "scheduled", "preempted", "admitted", "counters"}
    assert (tmp_path / "parity.csv").read_text().startswith("scenario,semantics")
    differs = subprocess.run([sys.executable, "-m", "apcsim.parity", "--scenarios", "multiturn_small_cache",
                              "cache.free_keyless_first=false", "--vllm-python", str(vllm)],
                             capture_output=True, text=True, cwd=ROOT)
    assert differs.returncode == 1 and "multiturn_small_cache: differs from step 39" in differs.stdout


# -- without vLLM ------------------------------------------------------------------------------
def test_compare_names_the_first_differing_step():
    step = {"step": 0, "scheduled": {"a": 4}, "preempted": [], "admitted": {"a": 0}, "counters": [4, 0, 0, 0]}
    other = {**step, "step": 1, "scheduled": {"a": 1}, "admitted": {}}
    assert compare([step, other], [step, other]).identical
    bad = {**other, "scheduled": {"a": 1, "b": 2}}
    c = compare([step, other], [step, bad])
    assert c.first_diff == 1 and c.steps_alike == 1 and "'b': (None, 2)" in c.diff
    assert compare([step, other], [step]).first_diff == 1
    assert "vllm says no" in compare([step], [step], "vllm says no").diff


def test_recording_schedules_every_token_once():
    """The recorder expands the lazy decode cohort: a request never preempted is logged with
    exactly the tokens it computes (its prompt beyond its hit, then every output but the last);
    a preempted one with at least as many (what it recomputes beyond its hit on resuming)."""
    rec = record_case(SCENARIOS["shared_prefix_preemption"])
    logged: dict[str, int] = {}
    first_hit: dict[str, int] = {}
    preempted = {rid for s in rec.steps for rid in s["preempted"]}
    for s in rec.steps:
        for rid, n in s["scheduled"].items():
            logged[rid] = logged.get(rid, 0) + n
        for rid, hit in s["admitted"].items():
            first_hit.setdefault(rid, hit)
    assert preempted and set(logged) == set(rec.requests)
    for rid, r in rec.requests.items():
        exact = len(r["prompt"]) - first_hit[rid] + len(r["outputs"]) - 1
        assert logged[rid] >= exact if rid in preempted else logged[rid] == exact, rid
    assert [a for a, _ in rec.arrivals] == sorted(a for a, _ in rec.arrivals)


def test_apcsim_never_imports_vllm():
    for path in (ROOT / "apcsim").rglob("*.py"):
        if path.name == "vllm_replay.py":
            continue
        imports = re.findall(r"^\s*(?:import|from)\s+vllm\b", path.read_text(), flags=re.M)
        assert not imports, path


def test_table_marks_a_difference():
    rec = record_case(SCENARIOS["seed_example_bs8"])
    from apcsim.parity.harness import Replay

    fake = [dict(s) for s in rec.steps]
    fake[5] = {**fake[5], "scheduled": {k: v + 1 for k, v in fake[5]["scheduled"].items()}}
    r = Replay("x", [], rec, {"steps": fake, "error": None}, compare(rec.steps, fake))
    assert requests_alike(r) == (3, 3)
    row = markdown([r]).splitlines()[2]
    assert "**no**" in row and "step 5" in row
