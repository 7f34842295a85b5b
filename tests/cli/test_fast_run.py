"""A plain command line that ran before starts without Hydra (apcsim.cli.fast_run): its run
directory (every file, .hydra/ included), stdout, stderr and exit status must be what Hydra's
path gives, for runs that succeed and runs that fail; it must not import Hydra or OmegaConf;
and anything that is not plain, or an entry that cannot be read, goes through Hydra."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import omegaconf
import pytest

from apcsim.cli.fast_run import FastEntry, is_template, plain_run_dir, resolve_template
from apcsim.config import MISSING
from apcsim.outputs.rundir import hold, release
from tests.cli.test_compose_once import _files
from tests.helpers import ROOT
from tests.helpers.sweeptools import TINY

LINES = [
    ["+policy=lru", "block_size=16", *TINY],
    ["vllm=v0_6_3", "+policy=lfu", "seed=3", "++max_concurrency=4", "report.plotlyjs=cdn", *TINY],
    ["report.enabled=false", "scheduler=priority", *TINY],
    ["num_gpu_blocks=3", *TINY],  # fails in the run: status.json "failed", one line, exit 2
]
# Prints the modules a run imported (to stderr, after the run's own lines).
MODULES_AFTER_RUN = """
import json, os, runpy, sys
sys.argv = ["apcsim", *sys.argv[1:]]
try:
    runpy.run_module("apcsim", run_name="__main__")
finally:
    print("MODULES " + json.dumps([os.getpid(), sorted(sys.modules)]), file=sys.stderr)
"""


def _run_pid(cwd: Path, args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, set[str], int]:
    """The run's outcome, the modules it imported and its process id."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    e.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, "-c", MODULES_AFTER_RUN, *args], capture_output=True, text=True, cwd=cwd,
                       env=e, timeout=300)
    err, _, tail = p.stderr.rpartition("MODULES ")
    pid, modules = json.loads(tail)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout, err), set(modules), pid


def _run(cwd: Path, args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, set[str]]:
    return _run_pid(cwd, args, env)[:2]


def _uses_hydra(modules: set[str]) -> bool:
    return any(m.split(".")[0] in ("hydra", "omegaconf") for m in modules)


@pytest.mark.parametrize("line", LINES, ids=" ".join)
def test_fast_run_is_hydras_run(tmp_path, line):
    """Hydra's own path (`--config-name config`), the plain line's first run (Hydra, which
    records the entry), and its next run from another directory into a relative run directory
    (no Hydra): the same files, bytes, lines and exit status."""
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = {"hydra": (tmp_path, f"{tmp_path}/hydra"), "first": (tmp_path, f"{tmp_path}/first"),
            "fast": (elsewhere, "fast/run")}
    out, dirs = {}, {}
    for name, (cwd, run_dir) in runs.items():
        flags = ["--config-name", "config"] if name == "hydra" else []
        p, modules = _run(cwd, [*flags, *line, f"hydra.run.dir={run_dir}"], env)
        assert _uses_hydra(modules) == (name != "fast"), name
        dirs[name] = cwd / run_dir
        out[name] = (p.returncode, p.stdout.replace(str(dirs[name]), "RUN_DIR"), p.stderr.replace(str(dirs[name]), "RUN_DIR"))
    assert len(list((tmp_path / "cache" / "fast").glob("*.pickle"))) == 1
    assert out["fast"] == out["first"] == out["hydra"]
    files = {name: _files(dirs[name], runs[name][0], as_dir=dirs["hydra"], as_cwd=tmp_path) for name in runs}
    # hydra.yaml names the run directory as given (relative for "fast"): put the absolute one back.
    files["fast"][".hydra/hydra.yaml"] = files["fast"][".hydra/hydra.yaml"].replace(
        "dir: fast/run\n", f"dir: {dirs['hydra']}\n").replace("hydra.run.dir=fast/run\n", f"hydra.run.dir={dirs['hydra']}\n")
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "main.log", "status.json"} <= set(files["hydra"])
    assert files["fast"] == files["first"] == files["hydra"]
    assert json.loads(files["fast"]["status.json"])["status"] == ("failed" if out["hydra"][0] else "ok")


DEFAULT_DIR = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${pid:}"  # apcsim/conf/config.yaml


def _named_run(cwd: Path, args: list[str], env: dict, template: str) -> tuple:
    """Run in `cwd`, where nothing else ran: the outcome, whether Hydra was imported, and the one
    directory the run made, which must be `template` resolved by the run's clock and pid."""
    before = datetime.now()
    p, modules, pid = _run_pid(cwd, args, env)
    after = datetime.now()
    made = [d for d in cwd.rglob("*") if (d / "status.json").is_file()]
    assert len(made) == 1, made
    name = str(made[0].relative_to(cwd))
    # The name is the template with each ${now:P} a time between the run's start and end.
    times = re.findall(r"\$\{now:([^}]*)\}", template)
    pattern = re.escape(template)
    for t in times:
        pattern = pattern.replace(re.escape(f"${{now:{t}}}"), "(.+?)", 1)
    pattern = pattern.replace(re.escape("${pid:}"), str(pid))
    m = re.fullmatch(pattern, name)
    assert m, (name, template)
    # Each field as some second of the run formats it (comparing the fields as strings broke when
    # the run crossed a minute: a seconds field of 00 after a start at 59).
    start = before.replace(microsecond=0)
    seconds = [start + timedelta(seconds=k) for k in range(int((after - start).total_seconds()) + 1)]
    for t, value in zip(times, m.groups()):
        assert value in {s.strftime(t) for s in seconds}, (t, value)
    return p, _uses_hydra(modules), made[0]


@pytest.mark.parametrize("template", [None, "run/${now:%H-%M}_${now:%S}/${pid:}.${now:%S}"], ids=["default", "given"])
@pytest.mark.parametrize("line", [LINES[0], LINES[3]], ids=" ".join)
def test_a_dir_named_after_the_time_is_hydras(tmp_path, line, template):
    """No hydra.run.dir (the default, named after the time and the pid), or one given as such a
    template: Hydra's own path, the first run (Hydra, which records) and the fast run (no Hydra,
    from another directory) name the directory by the same rule and write the same files (the
    directory's name masked), lines and exit status."""
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = [*line, *([] if template is None else [f"hydra.run.dir={template}"])]
    out, files = {}, {}
    for name in ("hydra", "first", "fast"):
        cwd = tmp_path / name
        cwd.mkdir()
        flags = ["--config-name", "config"] if name == "hydra" else []
        p, used_hydra, run_dir = _named_run(cwd, [*flags, *args], env, template or DEFAULT_DIR)
        assert used_hydra == (name != "fast"), name
        out[name] = (p.returncode, p.stdout.replace(str(run_dir), "RUN_DIR"), p.stderr.replace(str(run_dir), "RUN_DIR"))
        files[name] = _files(run_dir, cwd, as_dir="RUN_DIR", as_cwd="CWD")
    assert len(list((tmp_path / "cache" / "fast").glob("*.pickle"))) == 1
    assert out["fast"] == out["first"] == out["hydra"]
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "main.log", "status.json"} <= set(files["hydra"])
    # hydra.yaml keeps the template as written; its output_dir is the directory made.
    assert f"  run:\n    dir: {template or DEFAULT_DIR}\n" in files["hydra"][".hydra/hydra.yaml"]
    assert "\n    output_dir: RUN_DIR\n" in files["hydra"][".hydra/hydra.yaml"]
    assert files["fast"] == files["first"] == files["hydra"]


def test_a_plain_path_entry_is_not_a_templates(tmp_path):
    """The same overrides with a plain run directory and without one are two entries."""
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["report.enabled=false", *TINY]
    assert _run(tmp_path, [*args, "hydra.run.dir=a/b"], env)[0].returncode == 0
    for n, hydra in ((1, True), (2, False)):
        (tmp_path / f"default{n}").mkdir()
        p, used_hydra, _ = _named_run(tmp_path / f"default{n}", args, env, DEFAULT_DIR)
        assert p.returncode == 0 and used_hydra == hydra
    assert len(list((tmp_path / "cache" / "fast").glob("*.pickle"))) == 2


def test_a_held_run_dir_stops_the_fast_run(tmp_path):
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["report.enabled=false", *TINY]
    assert _run(tmp_path, [*args, "hydra.run.dir=a/b"], env)[0].returncode == 0  # records the entry
    hold(tmp_path / "held")
    try:
        p, modules = _run(tmp_path, [*args, "hydra.run.dir=held/"], env)
    finally:
        release(tmp_path / "held")
    assert not _uses_hydra(modules)
    assert p.returncode == 2 and p.stderr == (f"apcsim: error: hydra.run.dir=held is in use by another run "
                                              f"(pid {os.getpid()}); wait for it to finish or pick another hydra.run.dir\n")


def test_an_unreadable_entry_goes_through_hydra_and_is_rewritten(tmp_path):
    env = {"APCSIM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["report.enabled=false", *TINY]
    assert _run(tmp_path, [*args, "hydra.run.dir=x/1"], env)[0].returncode == 0
    entry, = (tmp_path / "cache" / "fast").glob("*.pickle")
    entry.write_bytes(b"\x80\x05garbage")
    p, modules = _run(tmp_path, [*args, "hydra.run.dir=x/2"], env)
    assert p.returncode == 0 and _uses_hydra(modules)
    assert isinstance(pickle.loads(entry.read_bytes()), FastEntry)
    p, modules = _run(tmp_path, [*args, "hydra.run.dir=x/3"], env)
    assert p.returncode == 0 and not _uses_hydra(modules)


def test_one_command_walks_the_installed_files_once(tmp_path, monkeypatch):
    """A plain line's first run keys the fast path (a miss), the compose cache and the entry it
    records with one walk of the installed files; the next command (a fast hit) walks them
    again, never reusing the last command's fingerprint (files may change in between)."""
    from apcsim.cli import installed
    from apcsim.cli.entry import entry

    walks = []
    walk = installed.fingerprint
    monkeypatch.setattr(installed, "fingerprint", lambda: walks.append(1) or walk())
    monkeypatch.setenv("APCSIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for n in (1, 2):
        monkeypatch.setattr(sys, "argv", ["apcsim", "report.enabled=false", *TINY, f"hydra.run.dir=run/{n}"])
        entry()
        assert len(walks) == n and json.loads((tmp_path / "run" / str(n) / "status.json").read_text())["status"] == "ok"
        assert [len(list((tmp_path / "cache" / d).glob("*.pickle"))) for d in ("fast", "compose")] == [1, 1]


@pytest.mark.parametrize("args", [
    ["+policy=lru", "hydra.run.dir=out/a", "hydra.run.dir=out/b"],
    ["+policy=lru", "hydra.run.dir=out/a", "hydra.run.dir=out/${now:%H}"],
    ["-m", "seed=1,2", "hydra.run.dir=out/a"],
    ["--cfg", "job", "hydra.run.dir=out/a"],
    ["hydra.job.chdir=true", "hydra.run.dir=out/a"],
    ["hydra/job_logging=disabled", "hydra.run.dir=out/a"],
    ["+hydra.foo=1", "hydra.run.dir=out/a"],
    ["hydra.run.dir=out"],  # no '/': YAML might read it as another type
    ["hydra.run.dir=out/with space"],
    ["hydra.run.dir=out/${now:%H:%M}"],  # ':' in a resolver's argument: OmegaConf's grammar
    ["hydra.run.dir=out/${now:}"],
    ["hydra.run.dir=out/${now:Y}"],  # no '%': might read as another type
    ["hydra.run.dir=out/${now: %H}"],
    ["hydra.run.dir=out/${hydra.job.name}"],
    ["hydra.run.dir=out/${oc.env:HOME}"],
    ["hydra.run.dir=out/${pid:}/$x"],
    ["hydra.run.dir=out/${pid:"],
    ["hydra.run.dir=---/x"],
    ["hydra.run.dir='out/a'"],
], ids=" ".join)
def test_what_is_not_plain_goes_through_hydra(args):
    assert plain_run_dir(args) is None


def test_plain_lines():
    assert plain_run_dir(["+policy=lru", "hydra.run.dir=out/a"]) == "out/a"
    assert plain_run_dir(["hydra.run.dir=/tmp/x.y/z-1_2/"]) == "/tmp/x.y/z-1_2/"
    assert plain_run_dir(["+policy=lru", "block_size=16"]) == ""  # the config's run directory
    assert plain_run_dir([f"hydra.run.dir={DEFAULT_DIR}"]) == DEFAULT_DIR
    assert plain_run_dir(["hydra.run.dir=${pid:}"]) == "${pid:}"  # resolved, not plain (no '/'): Hydra's path
    assert is_template(DEFAULT_DIR) and not is_template("out/a")


class _Clock:
    """datetime with a clock one second on at every reading."""

    t = datetime(2026, 12, 31, 23, 59, 58)

    @classmethod
    def now(cls):
        cls.t += timedelta(seconds=1)
        return cls.t


@pytest.mark.parametrize("template", [DEFAULT_DIR, "run/${now:%H-%M}_${now:%S}/${pid:}.${now:%S}-${pid:}",
                                      "${now:%Y}/${now:%Y-%m-%d}/${now:%H-%M-%S}/${now:%Y}"])
def test_a_template_resolves_as_omegaconf_does(monkeypatch, template):
    """Hydra's `now` and apcsim's `pid` through OmegaConf, and resolve_template, on a clock that
    moves (across a new year) at every reading: the same name, so the same readings in the same
    order (left to right, each distinct interpolation once)."""
    import hydra.core.utils
    from omegaconf import OmegaConf

    from apcsim.config import register_configs

    register_configs()
    hydra.core.utils.setup_globals()
    monkeypatch.setattr(hydra.core.utils, "datetime", _Clock)
    monkeypatch.setattr(_Clock, "t", datetime(2026, 12, 31, 23, 59, 58))
    by_omegaconf = str(OmegaConf.create({"dir": template}).dir)
    monkeypatch.setattr(_Clock, "t", datetime(2026, 12, 31, 23, 59, 58))
    monkeypatch.setattr("apcsim.cli.fast_run.datetime", _Clock)
    assert resolve_template(template) == by_omegaconf
    # Each reading a second on from 23:59:58: Hydra's own name can straddle midnight.
    assert by_omegaconf.startswith(("outputs/2026-12-31/00-00-00-", "run/23-59_00/", "2026/2027-01-01/00-00-01/2026"))
    assert (str(os.getpid()) in by_omegaconf) == ("${pid:}" in template)


def test_missing_is_omegaconfs():
    assert MISSING == omegaconf.MISSING
