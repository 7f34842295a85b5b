"""The on-disk cache of fitted cost models (apcsim.calibration.fit_cache): a hit is the same model
as a fresh fit, a changed profile or a corrupt entry is a miss, a hit is still checked against the
run, and an unwritable cache directory only costs the cache."""

from __future__ import annotations

import pickle
import shutil

import pytest

from apcsim.calibration.cost_model import CalibratedCostModel, make_cost_model
from apcsim.calibration.profile import profile_path, read_profile
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig

A100 = HardwareConfig(interconnect_bw_gbps=300.0)
H100 = HardwareConfig(name="h100", interconnect_bw_gbps=900.0)
LLAMA3_8B = ModelConfig()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("APCSIM_CACHE_DIR", str(d))
    return d / "fits"


@pytest.fixture
def profile(tmp_path):
    """A copy of the bundled profile, so that the in-process memo of fits (keyed by path) misses."""
    dst = tmp_path / "mine.csv"
    shutil.copy(profile_path("a100", "llama3_8b"), dst)
    return dst


def _entries(cache):
    return sorted(cache.glob("*.pickle")) if cache.exists() else []


def test_a_hit_is_the_fresh_fit(cache, profile):
    first = make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    assert len(_entries(cache)) == 1
    with _entries(cache)[0].open("rb") as f:
        identity, cached = pickle.load(f)
    assert identity == ("a100", "llama3_8b", 1)
    fresh = CalibratedCostModel(read_profile(profile), LLAMA3_8B)
    assert pickle.dumps(vars(cached)) == pickle.dumps(vars(fresh))
    plans = [StepPlan(0, [ScheduledChunk("r", 1024, 512, (), True)]),
             StepPlan(0, [], num_cohort=37, cohort_context_sum=37 * 900)]
    assert [first.step_time(p) for p in plans] == [fresh.step_time(p) for p in plans]


def test_changed_profile_misses(cache, profile):
    make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    lines = profile.read_text().splitlines(keepends=True)
    profile.write_text("".join(lines[:-1]))  # one measurement fewer
    make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    assert len(_entries(cache)) == 2


def test_corrupt_entry_is_refitted_and_rewritten(cache, profile):
    make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    entry, = _entries(cache)
    entry.write_bytes(b"not a pickle")
    model = make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    assert isinstance(model, CalibratedCostModel)
    with entry.open("rb") as f:
        assert pickle.load(f)[0] == ("a100", "llama3_8b", 1)


def test_a_hit_is_checked_against_the_run(cache, profile):
    make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))
    with pytest.raises(ConfigError, match="is for hardware=a100 model=llama3_8b, not hardware=h100"):
        make_cost_model("calibrated", H100, LLAMA3_8B, profile=str(profile))
    (profile.parent / "mine.meta.json").write_text('{"hardware": "a100", "model": "tiny"}')
    with pytest.raises(ConfigError, match="measured for model=tiny"):
        make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile))


def test_unwritable_cache_dir_runs_uncached(tmp_path, monkeypatch, profile):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("APCSIM_CACHE_DIR", str(blocker / "cache"))  # below a file: mkdir fails
    assert isinstance(make_cost_model("calibrated", A100, LLAMA3_8B, profile=str(profile)), CalibratedCostModel)
