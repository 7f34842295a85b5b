"""The calibrated cost model: profile schema and conversion, held-out fit errors, monotonicity in
and beyond the profiled range, physics bounds, bit-equal decode stretches, and the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apcsim.calibration.cost_model import CalibratedCostModel, load_calibrated, make_cost_model
from apcsim.calibration.holdout import holdout_errors
from apcsim.calibration.profile import COLUMNS, available_profiles, profile_path, read_profile, write_profile
from apcsim.calibration.report import TARGETS, prediction_plans
from apcsim.cli.compose import compose_config
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig
from apcsim.run import build_cost_model, simulate
from apcsim.sim.cost_model import RooflineCostModel
from tests.helpers import DATA

# Raw Vidur rows at a few points (tests/data/vidur_small/README.md: which rows, origin, license).
VIDUR_SMALL = DATA / "vidur_small"
A100 = HardwareConfig()
LLAMA3_8B = ModelConfig()


@pytest.fixture(scope="module")
def profile():
    return read_profile(profile_path("a100", "llama3_8b"))


@pytest.fixture(scope="module")
def cost():
    return load_calibrated(profile_path("a100", "llama3_8b"), LLAMA3_8B)


def _ms(cost, plan) -> float:
    return cost.step_time(plan) * 1e3


def _prefill(n: int, ctx: int = 0) -> StepPlan:
    return StepPlan(0, [ScheduledChunk("r", n, ctx, (), True)])


def _decode(b: int, c: int) -> StepPlan:
    return StepPlan(0, [], num_cohort=b, cohort_context_sum=b * c)


# -- schema and conversion ----------------------------------------------------------------------
def test_bundled_profile_matches_schema(profile):
    assert "a100/llama3_8b" in available_profiles()
    assert (profile.hardware, profile.model) == ("a100", "llama3_8b")
    header = profile_path("a100", "llama3_8b").read_text().splitlines()[0]
    assert tuple(header.split(",")) == COLUMNS
    tok = profile.ops["mlp_up_proj"]
    assert (tok.num_heads, tok.num_kv_heads, tok.head_dim) == (32, 8, 128)
    assert tok.num_tokens.min() == 1 and tok.num_tokens.max() == 32768
    for op in ("attn_prefill", "attn_decode"):
        d = profile.ops[op]
        assert (d.num_heads, d.num_kv_heads, d.head_dim) == (32, 4, 128)  # Llama-2-70B at TP2
    dec = profile.ops["attn_decode"]
    assert dec.batch_size.max() == 128 and np.array_equal(dec.num_tokens, dec.batch_size)
    assert {"cpu_schedule", "cpu_sampler", "cpu_prepare_inputs", "cpu_process_outputs"} <= set(profile.ops)


def _in_vidur_small(row: dict) -> bool:
    """The points tests/data/vidur_small keeps, read off a profile row."""
    n, bs, ctx = int(row["num_tokens"]), int(row["batch_size"]), int(row["context_len"])
    if row["op"] == "attn_prefill":
        return n in (64, 1024) and ctx in (0, 2048)
    if row["op"] == "attn_decode":
        return bs in (1, 128) and ctx in (32, 4032)
    if row["op"].startswith("cpu_"):
        return True  # cpu_overheads.csv is there whole
    return n in (1, 512, 4096, 32768)


def test_vidur_conversion_reproduces_bundled_profile(tmp_path):
    """The converter on a slice of Vidur's raw files gives, byte for byte and in order, the rows
    of the bundled profile at the slice's points (the bundled file was converted from all of them)."""
    out = tmp_path / "a100" / "llama3_8b.csv"
    r = subprocess.run([sys.executable, "-m", "apcsim.calibration.vidur", "--src", str(VIDUR_SMALL), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = out.read_text().splitlines()
    bundled = profile_path("a100", "llama3_8b").read_text().splitlines()
    assert got[0] == bundled[0] == ",".join(COLUMNS)
    want = [line for line, row in zip(bundled[1:], csv.DictReader(bundled)) if _in_vidur_small(row)]
    # 4 token counts x 10 token ops (4096 and 32768 measured twice), 10 attention rows, 13 x 4 CPU ops.
    assert len(got) - 1 == 6 * 10 + 10 + 13 * 4
    assert got[1:] == want


def test_converter_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "apcsim.calibration.vidur", "--src", str(tmp_path), "--out", str(tmp_path / "x.csv")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr


def _row(op, n, t, *, bs=0, ctx=0, heads=32, kv=8, hw="h100", model="llama3_8b"):
    return dict(hardware=hw, model=model, op=op, num_tokens=n, batch_size=bs, context_len=ctx, num_heads=heads,
                num_kv_heads=kv, head_dim=128, tp=1, time_ms_median=t, source="apcsim-engine@test")


def engine_profile_rows() -> list[dict]:
    """What our engine's profiler writes: measured shapes, lm_head, kv_cache_save, cpu_step and
    cpu_hash rows, and no Vidur-only ops."""
    rows = []
    for n in (1, 16, 64, 256, 1024, 4096):
        for op, per_tok in (("attn_pre_proj", 1e-4), ("attn_post_proj", 8e-5), ("mlp_up_proj", 5e-4),
                            ("mlp_down_proj", 2.5e-4), ("kv_cache_save", 1e-6), ("lm_head", 2e-3)):
            rows.append(_row(op, n, 0.01 + per_tok * n))
    for n in (64, 256, 1024):
        for c in (0, 512, 2048):
            rows.append(_row("attn_prefill", n, 0.01 + 1e-7 * n * (c + n / 2), bs=1, ctx=c))
    for b in (1, 8, 64):
        for c in (128, 1024, 4096):
            rows.append(_row("attn_decode", b, 0.01 + 5e-7 * b * c, bs=b, ctx=c))
    for b in (1, 32, 128):
        rows.append(_row("cpu_step", 0, 0.5 + 0.01 * b, bs=b))
    rows.append(_row("cpu_hash", 4096, 4096 * 50e-6))  # 50 ns per token
    return rows


def test_engine_profiler_rows_round_trip_and_fit(tmp_path):
    path = tmp_path / "h100" / "llama3_8b.csv"
    write_profile(path, engine_profile_rows())
    prof = read_profile(path)
    assert (prof.hardware, prof.model) == ("h100", "llama3_8b")
    cost = CalibratedCostModel(prof, LLAMA3_8B)
    assert cost.name == "calibrated(h100, llama3_8b)"
    assert cost.cpu_step_ms == pytest.approx(0.5) and cost.cpu_request_ms == pytest.approx(0.01)
    assert cost.hash_ms_per_token * 1e6 == pytest.approx(50.0)
    assert cost.lm_head(1024) == pytest.approx(0.01 + 2e-3 * 1024)  # measured, not derived
    # Shapes equal the model's: decode is not rescaled.
    assert cost.decode(8, 8 * 1024) == pytest.approx(0.01 + 5e-7 * 8 * 1024)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("attn_pre_proj", "attn_pre_projection", 1), "line 2: unknown op"),
    (lambda t: t.replace("0.0101", "-1", 1), "line 2: times must be > 0"),
    (lambda t: t.replace("time_ms_median", "time_ms", 1), "columns must be"),
])
def test_malformed_profile_is_rejected(tmp_path, edit, match):
    path = tmp_path / "p.csv"
    write_profile(path, engine_profile_rows())
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=match):
        read_profile(path)


# -- fit quality ---------------------------------------------------------------------------------
def test_heldout_errors_meet_targets(profile):
    errs = holdout_errors(profile, fraction=0.2, seed=0)
    assert set(errs) == set(profile.ops)
    for op, e in errs.items():
        assert e["n_holdout"] >= 2, op
        if op.startswith("cpu_"):
            # 12 batch sizes, 2 or 3 held out, affine by design (per step + per request): looser.
            assert e["median_ape_pct"] <= 10 and e["p90_ape_pct"] <= 10, (op, e)
        else:
            assert e["median_ape_pct"] <= TARGETS["median_ape_pct"], (op, e)
            assert e["p90_ape_pct"] <= TARGETS["p90_ape_pct"], (op, e)


# -- monotone in tokens and context, inside and beyond the profile ------------------------------------
def test_token_and_attention_fits_are_monotone(cost):
    t = np.unique(np.geomspace(1, 200_000, 400).astype(int))
    assert np.all(np.diff(cost.tokens.eval(t)) >= 0) and np.all(np.diff(cost.lm_head.eval(t)) >= 0)
    ns = [2, 17, 64, 100, 511, 1000, 2047, 4000, 4096, 5000, 8192, 16384]
    cs = [0, 1, 31, 100, 1000, 3000, 4032, 4100, 8000, 32768, 131072]
    pre = np.array([[cost.prefill(n, c) for c in cs] for n in ns])
    assert np.all(np.diff(pre, axis=0) >= 0) and np.all(np.diff(pre, axis=1) >= 0)
    bs = [1, 2, 7, 64, 127, 128, 129, 200, 256, 512]
    dec = np.array([[cost.decode(b, b * c) for c in cs] for b in bs])
    assert np.all(np.diff(dec, axis=0) >= 0) and np.all(np.diff(dec, axis=1) >= 0)
    # Whole steps: more new tokens, more context, more decodes never cost less.
    steps = np.array([[_ms(cost, _prefill(n, c)) for c in cs] for n in ns])
    assert np.all(np.diff(steps, axis=0) >= 0) and np.all(np.diff(steps, axis=1) >= 0)
    dsteps = np.array([[_ms(cost, _decode(b, c)) for c in cs] for b in bs])
    assert np.all(np.diff(dsteps, axis=0) >= 0) and np.all(np.diff(dsteps, axis=1) >= 0)
    assert cost.recompute_time(16, 0) < cost.recompute_time(16, 16) < cost.recompute_time(16, 100_000)


def test_long_chunks_grow_quadratically_not_linearly(cost):
    """Beyond the profiled 4,096-token chunk, causal attention keeps its n^2 growth."""
    r = cost.prefill(8192, 0) / cost.prefill(4096, 0)
    assert 3.9 < r < 4.1


# -- physics -----------------------------------------------------------------------------------------
def test_decode_cannot_beat_reading_the_weights(cost):
    bound_ms = LLAMA3_8B.weight_bytes / (A100.mem_bw_gbps * 1e9) * 1e3
    assert bound_ms == pytest.approx(7.9, abs=0.05)  # 16.1 GB / 2.04 TB/s
    ms = _ms(cost, _decode(1, 1024))
    assert bound_ms <= ms <= 1.6 * bound_ms


def test_prefill_cannot_beat_peak_flops(cost):
    bound_ms = 2 * 8.0e9 * 4096 / 312e12 * 1e3
    assert _ms(cost, _prefill(4096)) >= bound_ms
    assert _ms(cost, _prefill(8192)) >= 2 * bound_ms


def test_cached_prefix_is_cheaper_than_full_prefill(cost):
    plans = prediction_plans()
    full, cached = _ms(cost, plans["prefill_4096"]), _ms(cost, plans["prefill_4096_cached_3072"])
    assert _ms(cost, plans["prefill_1024"]) < cached < full


def _with_decode_steps(tmp_path: Path, **kw) -> CalibratedCostModel:
    """The A100 profile plus `decode_step` rows (whole graphed decode steps) of a made-up but
    monotone shape: 5 ms + 0.02 ms per request + 1 us per KV token read."""
    src = profile_path("a100", "llama3_8b")
    lines = src.read_text().splitlines()
    cols = lines[0].split(",")
    extra = []
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for c in (128, 1024, 4096):
            row = dict(zip(cols, lines[1].split(",")))
            row.update(op="decode_step", num_tokens=b, batch_size=b, context_len=c, num_heads=32, num_kv_heads=8,
                       head_dim=128, tp=1, time_ms_median=5.0 + 0.02 * b + 1e-3 * b * c / 1000, source="test")
            extra.append(",".join(str(row[k]) for k in cols))
    path = tmp_path / "with_steps.csv"
    path.write_text("\n".join(lines + extra) + "\n")
    return CalibratedCostModel(read_profile(path), LLAMA3_8B, **kw)


def test_decode_step_rows_cost_pure_decode_steps_whole(cost, tmp_path):
    whole = _with_decode_steps(tmp_path)
    assert cost.decode_step is None and whole.decode_step is not None
    dec = _decode_sum(64, 64 * 1024)
    cpu = whole.cpu_step_ms + whole.cpu_request_ms * 64
    assert _ms(whole, dec) == pytest.approx(5.0 + 0.02 * 64 + 1e-3 * 64 * 1024 / 1000 + cpu, rel=1e-9)
    # 9 requests run as the engine's graph bucket of 16 (7 padding rows, no context of their own).
    cpu9 = whole.cpu_step_ms + whole.cpu_request_ms * 9
    assert _ms(whole, _decode_sum(9, 9 * 1024)) == pytest.approx(whole.decode_step(16, 9 * 1024) + cpu9, rel=1e-12)
    assert whole.decode_step(16, 9 * 1024) > whole.decode_step(9, 9 * 1024)
    # A step with any prefill chunk is still the per-op sum, identical to the profile without rows.
    mixed = StepPlan(0, [ScheduledChunk("p", 256, 0, (), True)], num_cohort=8, cohort_context_sum=8 * 1024)
    assert _ms(whole, mixed) == _ms(cost, mixed)
    # A head-shape mismatch cannot be rescaled for a whole step: refused.
    with pytest.raises(ValueError, match="decode_step was measured with other heads"):
        CalibratedCostModel(read_profile(tmp_path / "with_steps.csv"),
                            ModelConfig(**{**LLAMA3_8B.__dict__, "num_kv_heads": 4}))


def test_decode_batches_above_the_largest_graph_run_per_op(cost, tmp_path):
    """An engine with cuda_graph_max_batch=20 captures buckets up to 24 and runs larger decode
    batches eagerly: the simulator costs those per op, exactly as without decode_step rows."""
    capped = _with_decode_steps(tmp_path, decode_graph_max_batch=20)
    whole = _with_decode_steps(tmp_path)
    assert capped.graph_max_batch == 24
    for n in (1, 9, 20, 24):
        assert _ms(capped, _decode_sum(n, n * 512)) == _ms(whole, _decode_sum(n, n * 512))
    for n in (25, 64):
        assert _ms(capped, _decode_sum(n, n * 512)) == _ms(cost, _decode_sum(n, n * 512))
        assert _ms(capped, _decode_sum(n, n * 512)) != _ms(whole, _decode_sum(n, n * 512))
    assert capped.decode_stretch_times(25, 25 * 512, 3).tolist() == cost.decode_stretch_times(25, 25 * 512, 3).tolist()
    with pytest.raises(ValueError, match="decode_graph_max_batch must be >= 1"):
        _with_decode_steps(tmp_path, decode_graph_max_batch=0)


# -- exactness the simulator relies on -----------------------------------------------------------------
@pytest.fixture(params=["per_op", "decode_step", "decode_step_capped"])
def any_cost(request, cost, tmp_path):
    if request.param == "per_op":
        return cost
    return _with_decode_steps(tmp_path, decode_graph_max_batch=100 if request.param.endswith("capped") else None)


def test_step_time_equals_decode_stretch_bit_for_bit(any_cost):
    cost = any_cost
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(1, 400))
        c = int(rng.integers(0, n * int(rng.choice([40, 3000, 30000]))))
        k = int(rng.integers(1, 6))
        times = cost.decode_stretch_times(n, c, k)
        assert times.dtype == np.float64 and times.shape == (k,)
        for j in range(k):
            assert cost.step_time(_decode_sum(n, c + n * j)) == times[j]
        # Some of them as explicit one-token chunks: the same step time.
        m = int(rng.integers(0, min(n, 6) + 1))
        ctxs = [int(x) for x in rng.integers(0, c // n + 1, m)]
        if sum(ctxs) <= c:
            mixed = StepPlan(0, [ScheduledChunk(str(i), 1, x, (), True) for i, x in enumerate(ctxs)],
                             num_cohort=n - m, cohort_context_sum=c - sum(ctxs))
            assert cost.step_time(mixed) == times[0]


def test_short_stretches_cost_the_same_bits_as_long_ones(any_cost, monkeypatch):
    """Stretches up to SHORT_STRETCH steps are costed in plain Python, longer ones with NumPy:
    the two agree bit for bit on every step, and with stepping (above) on the short ones."""
    from apcsim.calibration import cost_model as cm

    cost, threshold = any_cost, cm.SHORT_STRETCH
    rng = np.random.default_rng(1)
    for _ in range(400):
        n = int(rng.integers(1, 400))
        c = int(rng.integers(0, n * int(rng.choice([40, 3000, 30000, 300000]))))
        k = int(rng.integers(1, threshold + 1))
        short = cost.decode_stretch_times(n, c, k)
        monkeypatch.setattr(cm, "SHORT_STRETCH", 0)
        long = cost.decode_stretch_times(n, c, k)
        monkeypatch.setattr(cm, "SHORT_STRETCH", threshold)
        assert short.dtype == long.dtype == np.float64 and short.shape == long.shape == (k,)
        assert short.tobytes() == long.tobytes(), (n, c, k)
        # What the simulator reads: the same floats as a list, with no array in between.
        assert cost.decode_stretch_list(n, c, k) == short.tolist(), (n, c, k)
    # A stretch past the threshold goes through NumPy, and still matches stepping.
    n, c, k = 7, 7 * 900, threshold + 5
    times = cost.decode_stretch_times(n, c, k)
    assert [cost.step_time(_decode_sum(n, c + n * j)) for j in range(k)] == times.tolist()
    assert cost.decode_stretch_list(n, c, k) == times.tolist()


def _decode_sum(n: int, context_sum: int) -> StepPlan:
    return StepPlan(0, [], num_cohort=n, cohort_context_sum=context_sum)


def _same(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    else:  # exact: step times are bit-equal (above) and added in the same order either way
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_skipping_quiet_stretches_changes_nothing():
    args = ["workload.num_requests=12", "workload.output_tokens=300", "+policy=lru", "report.enabled=false"]
    a = simulate(compose_config(args)).metrics
    b = simulate(compose_config(args + ["skip_quiet=false"])).metrics
    assert a["config"]["cost_model"] == "calibrated(a100, llama3_8b)"
    _same(a, b)


# -- selection -----------------------------------------------------------------------------------------
def test_default_config_selects_the_calibrated_model():
    cfg = compose_config([])
    assert cfg.cost_model == "calibrated"
    assert isinstance(build_cost_model(cfg), CalibratedCostModel)
    assert isinstance(make_cost_model("roofline", cfg.hardware, cfg.model), RooflineCostModel)


@pytest.mark.parametrize("overrides", [["model=tiny"], ["hardware=h100"]])
def test_missing_profile_is_a_config_error(overrides):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match="available: hardware=a100 model=llama3_8b.*cost_model=roofline"):
        build_cost_model(cfg)
    cfg = compose_config(overrides + ["cost_model=roofline"])
    assert build_cost_model(cfg).name.startswith("roofline(")


def test_unknown_cost_model_is_a_config_error():
    with pytest.raises(ConfigError, match="cost_model must be one of calibrated, roofline"):
        make_cost_model("vidur", A100, LLAMA3_8B)


# -- the calibration CLI ---------------------------------------------------------------------------------
def _calibration_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "apcsim.calibration", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_calibration_cli_writes_json(tmp_path):
    r = _calibration_cli(tmp_path, "hardware=a100", "model=llama3_8b")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "run" / "calibration.json").read_text())
    names = {f"prefill_{n}" for n in (512, 1024, 2048, 4096, 8192)} | {"prefill_4096_cached_3072"}
    names |= {f"decode_b{b}_c{c}" for b in (1, 16, 64, 128) for c in (1024, 4096)}
    assert set(out["predictions_ms"]) == names
    assert all(v > 0 for v in out["predictions_ms"].values())
    assert {"mlp_up_proj", "attn_prefill", "attn_decode"} <= set(out["ops"])
    for e in out["ops"].values():
        assert {"median_ape_pct", "p90_ape_pct", "n_holdout"} <= set(e)


@pytest.mark.parametrize("args,expect", [
    (["model=tiny"], "no calibration profile for hardware=a100 model=tiny"),
    (["holdout_fraction=1.5"], "holdout_fraction must be in (0, 1)"),
])
def test_calibration_cli_errors_are_one_line(tmp_path, args, expect):
    r = _calibration_cli(tmp_path, *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apcsim.calibration: error: ") and expect in lines[0].lower()


def test_prefill_beyond_the_largest_chunk_keeps_the_fixed_cost_fixed():
    """A kernel costing a fixed 0.4 ms per call plus 10 ns per (query, key) pair, profiled up to
    64-token chunks: a 128-token chunk extrapolates to that same law, not to the fixed cost
    scaled with the chunk's square (what overstated CPU prefill steps 1.5-1.9x)."""
    from apcsim.calibration.attention import PrefillAttention

    def law(n, c):
        return 0.4 + 1e-5 * (n * c + n * n / 2)

    pts = [(n, c) for n in (2, 16, 64) for c in (0, 256, 768)]
    fit = PrefillAttention.fit([n for n, _ in pts], [c for _, c in pts], [law(n, c) for n, c in pts])
    for n, c in ((128, 128), (256, 0), (512, 768)):
        assert fit(n, c) == pytest.approx(law(n, c), rel=0.02), (n, c)


def test_a_grid_along_y_is_its_pointwise_value_in_any_order():
    """`Grid.along_y` walks its y cell forward from the last point (a stretch's contexts only
    grow): it equals calling the grid point by point, bit for bit, for growing ys, ys that fall
    back, ys on the knots and ys below and beyond them."""
    from apcsim.calibration.fit import Grid

    rng = np.random.default_rng(3)
    for trial in range(300):
        nx, ny = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        xs = np.sort(rng.choice(np.arange(1, 200), nx, replace=False)).astype(float)
        ys = np.sort(rng.choice(np.arange(1, 5000), ny, replace=False)).astype(float)
        # Cells of very different sizes (timings span microseconds to seconds).
        table = np.cumsum(np.cumsum(np.exp(rng.uniform(-8, 8, (nx, ny))), axis=0), axis=1)
        grid = Grid(xs, ys, table, np.sort(rng.random(ny)), np.sort(rng.random(nx)))
        x = float(rng.uniform(0, 250))
        points = [float(v) for v in rng.uniform(0, 6000, int(rng.integers(1, 40)))]
        if trial % 2:
            points.sort()
        points += [float(v) for v in ys] + [0.0, 6000.0, float(ys[0]) + 0.5]  # knots, in order
        assert grid.along_y(x, points) == [grid(x, y) for y in points], trial
