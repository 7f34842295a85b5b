"""The host link's profile: the fit, the engine's profiler on the CPU (on the GPU where there is
one), and a run that uses the fit instead of the preset's datasheet figures."""

from __future__ import annotations

import numpy as np
import pytest

from apcsim.calibration.host_link import fit_link, read_link_profile, write_link_profile
from apcsim.cli.compose import compose_config
from apcsim.errors import ConfigError
from apcsim.run import build_cost_model, checked_config
from apcsim.tier_config import host_tier_parts

torch = pytest.importorskip("torch")


def test_fit_recovers_latency_and_bandwidth():
    b = np.array([1e6, 2e6, 8e6, 32e6])
    fit = fit_link(b, (10e-6 + b / 10e9) * 1e3)  # 10 us + 10 GB/s, in ms
    assert fit.bw_gbps == pytest.approx(10.0) and fit.latency_us == pytest.approx(10.0)
    noisy_small = fit_link(b, (b / 5e9) * 1e3 - np.array([1e-3, 0, 0, 0]))  # a negative intercept: clamped
    assert noisy_small.latency_us == 0.0 and noisy_small.bw_gbps > 0


def test_cpu_profile_feeds_a_run(tmp_path):
    from engine.host_link import block_counts, main

    path = main(["device=cpu", "model=tiny", "max_blocks=64", "repeats=3", f"out={tmp_path / 'link.csv'}"])
    rows = path.read_text().splitlines()
    assert rows[0] == "direction,num_blocks,bytes,time_ms" and len(rows) == 1 + 2 * len(block_counts(64))
    fit = read_link_profile(path)
    cfg = checked_config(compose_config(["+policy=lru", "model=tiny", "hardware=cpu", "cost_model=roofline",
                                         "cpu_tier.num_blocks=16", f"cpu_tier.link_profile={path}"]))
    link = host_tier_parts(cfg, build_cost_model(cfg)).link
    assert (link.bw_gbps, link.latency_us) == (fit["load"].bw_gbps, fit["load"].latency_us)
    assert (link.store_bw_gbps, link.store_latency_us) == (fit["store"].bw_gbps, fit["store"].latency_us)


def test_bad_profiles_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_link_profile(tmp_path / "missing.csv")
    one = write_link_profile(tmp_path / "one.csv", [{"direction": "load", "num_blocks": 1, "bytes": 10, "time_ms": 1.0}])
    with pytest.raises(ConfigError, match="fewer than two sizes"):
        read_link_profile(one)


def test_engine_host_link_rejects_bad_arguments(capsys):
    from engine.host_link import main

    with pytest.raises(SystemExit) as e:
        main(["max_blocks=1"])
    assert e.value.code == 2 and "max_blocks must be an integer >= 2" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_profile_measures_a_host_link(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from engine.host_link import main

    fit = read_link_profile(main(["device=cuda", "model=llama3_8b", "max_blocks=64", f"out={tmp_path / 'link.csv'}"]))
    # Any PCIe or NVLink-C2C host link moves well over 1 GB/s one way.
    assert fit["load"].bw_gbps > 1.0 and fit["store"].bw_gbps > 1.0
