"""The on-disk cache of plain runs' composed configs (apcsim.cli.compose_cache): a hit, from
another working directory and with another run directory, is the config a fresh composition
gives; a changed config file is a miss; a corrupt entry is composed again; what Hydra must handle
itself is never cached."""

from __future__ import annotations

import os

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from apcsim.cli import compose_cache, installed
from apcsim.cli.compose_once import compose_for_run
from apcsim.cli.main import CONFIG_NAME
from tests.cli.test_compose_once import RUNS_ONCE
from tests.helpers.hydra_app import make_hydra


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("APCSIM_CACHE_DIR", str(tmp_path / "cache"))
    yield make_hydra()
    GlobalHydra.instance().clear()


def _entries(tmp_path):
    d = tmp_path / "cache" / "compose"
    return sorted(d.glob("*.pickle")) if d.exists() else []


def _cached(app, overrides):
    hydra, application = app
    return compose_cache.cached(application, list(overrides), lambda: compose_for_run(hydra, CONFIG_NAME, list(overrides)),
                                installed.Fingerprint())


@pytest.mark.parametrize("overrides", RUNS_ONCE + [["+policy=lru", "hydra.run.dir=out/a-1.b/x"]], ids=" ".join)
def test_a_hit_is_a_fresh_composition(app, tmp_path, monkeypatch, overrides):
    run_dir = [o for o in overrides if o.startswith("hydra.run.dir=")]
    first = _cached(app, overrides)
    assert len(_entries(tmp_path)) == 1
    # Another working directory and (where it is plain) another run directory: the same entry.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    again = ["hydra.run.dir=/elsewhere/b" if o in run_dir else o for o in overrides]
    hit = _cached(app, again)
    assert len(_entries(tmp_path)) == 1
    fresh = compose_for_run(app[0], CONFIG_NAME, again)
    assert OmegaConf.to_yaml(hit) == OmegaConf.to_yaml(fresh)
    assert hit.hydra.runtime.cwd == str(other) != first.hydra.runtime.cwd
    if run_dir:
        assert hit.hydra.run.dir == "/elsewhere/b" and "hydra.run.dir=/elsewhere/b" in hit.hydra.overrides.hydra


def test_run_dirs_hydra_reads_otherwise_are_part_of_the_key(app, tmp_path):
    """Quoted, interpolated or bare-word run directories, and paths YAML would quote (the fast
    path's one definition of a plain path), are composed, not patched in."""
    for run_dir in ("'out/x'", "out/${now:%H}", "outputs", "---/x", "---/y"):
        cfg = _cached(app, [f"hydra.run.dir={run_dir}"])
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(compose_for_run(app[0], CONFIG_NAME, [f"hydra.run.dir={run_dir}"]))
    assert len(_entries(tmp_path)) == 5  # one each


def test_a_changed_config_file_misses(app, tmp_path, monkeypatch):
    conf = tmp_path / "pkg"
    conf.mkdir()
    (conf / "x.yaml").write_text("a: 1\n")
    monkeypatch.setattr(installed, "config_packages", lambda: [conf])
    key = compose_cache.entry_key(app[1], [], installed.fingerprint())
    (conf / "x.yaml").write_text("a: 22\n")
    assert compose_cache.entry_key(app[1], [], installed.fingerprint()) != key
    os.utime(conf / "x.yaml", ns=(1, 1))
    changed = compose_cache.entry_key(app[1], [], installed.fingerprint())
    os.utime(conf / "x.yaml", ns=(2, 2))
    assert compose_cache.entry_key(app[1], [], installed.fingerprint()) != changed


def test_corrupt_entry_is_composed_again(app, tmp_path):
    _cached(app, ["+policy=lru"])
    entry, = _entries(tmp_path)
    entry.write_bytes(b"\x80\x05garbage")
    cfg = _cached(app, ["+policy=lru"])
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(compose_for_run(app[0], CONFIG_NAME, ["+policy=lru"]))
    assert entry.read_bytes() != b"\x80\x05garbage"


@pytest.mark.parametrize("overrides", [["+experiment=policy_zoo"], ["seed=1,2"], ["block_size=abc"]], ids=" ".join)
def test_what_hydra_handles_is_not_cached(app, tmp_path, overrides):
    assert _cached(app, overrides) is None
    assert _entries(tmp_path) == []


def test_a_user_search_path_is_never_cached(app, tmp_path):
    """A preset directory added with hydra.searchpath is outside the key's files: editing a
    preset there must change the next run's config, so such a command line always composes."""
    presets = tmp_path / "presets" / "hardware"
    presets.mkdir(parents=True)
    (presets / "mine.yaml").write_text("name: mine\n")
    overrides = [f"hydra.searchpath=[file://{tmp_path / 'presets'}]", "hardware=mine"]
    calls = []

    def compose():
        calls.append(1)
        return compose_for_run(app[0], CONFIG_NAME, list(overrides))

    for _ in range(2):
        compose_cache.cached(app[1], list(overrides), compose, installed.Fingerprint())
    assert len(calls) == 2 and _entries(tmp_path) == []
    assert compose() is not None  # a composable run: without the rule it would have been cached
