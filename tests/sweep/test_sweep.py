"""Experiment presets and sweep collection: every preset composes, a real multirun is collected
into one CSV a row per job, and the collector refuses what it cannot read."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from apcsim.cli.compose import compose_config
from apcsim.sweep.__main__ import main
from apcsim.sweep.collect import collect, flatten, parse_overrides
from tests.helpers import ROOT

CONF = ROOT / "apcsim" / "conf" / "experiment"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("seed_*.yaml")))
def test_preset_composes_with_its_first_grid_point(name):
    """A preset's fixed keys apply, and the first value of each swept key composes."""
    params = yaml.safe_load((CONF / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    overrides = [f"+experiment={name}"] + [f"{k}={str(v).split(',')[0]}" for k, v in params.items()]
    cfg = compose_config(overrides)
    assert cfg.workload.num_requests == 256 and cfg.workload.output_tokens == 1024
    assert cfg.scheduler.max_num_seqs == 128 and cfg.report.enabled is False


def test_parse_overrides_drops_preset_and_output_keys():
    got = parse_overrides(["+experiment=x", "+policy=lru", "max_concurrency=8", "hydra.sweep.dir=/tmp/a"])
    assert got == {"policy": "lru", "max_concurrency": "8"}


def test_flatten_nests_with_underscores():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b_c": 2, "b_d_e": 3}


def test_real_multirun_is_collected_one_row_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "apcsim", "-m", "+policy=none,lru", "workload.num_requests=12",
           "workload.input_tokens=256", "workload.output_tokens=8", "workload.shared_fraction=0.5",
           "report.enabled=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = collect(sweep)
    assert [r["policy"] for r in rows] == ["none", "lru"]
    none, lru = rows
    assert none["prefix_cache_hit_rate"] == 0.0 and lru["prefix_cache_hit_rate"] > 0.3
    assert none["num_finished"] == lru["num_finished"] == 12
    main([str(sweep)])
    with open(sweep / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and table[1]["policy"] == "lru"


def test_collector_errors_are_one_line(tmp_path, capsys):
    for args, msg in (([str(tmp_path / "missing")], "no sweep directory"), ([str(tmp_path)], "no finished jobs")):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("apcsim.sweep: error: ") and msg in err
