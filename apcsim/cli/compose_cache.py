"""A plain run's composed config, cached on disk: composing it is a tenth of a short run's CPU
time, and a sweep script runs the same few command lines over and over.

An entry is the config `compose_once.compose_for_run` returns (before anything in it is resolved:
`${now:}` and `${pid:}` resolve when the run starts), keyed by everything composition reads:

- the command line's overrides and the application (`App`: where its conf/ is, its config and
  task names; with the files below they fix Hydra's search path, so a hit needs neither the
  search path nor Hydra's scan of its plugins, which imports every installed plugin); but
  not the working directory and a plain `hydra.run.dir=PATH` (apcsim.cli.fast_run's
  `is_plain_run_dir_override`; a sweep script gives each job its own): composition puts them in
  `hydra.runtime.cwd`, `hydra.run.dir` and the override's entry in `hydra.overrides.hydra` only,
  and a hit gets this run's there (tests compare a hit from another directory with a fresh
  composition);
- the code and files that define the config: every .py and .yaml file of apcsim (its conf/ and
  the dataclass schemas) and of policies (the policies' registered configs), and of the installed
  Hydra plugins (their registered configs and search paths), by path, size and modification
  time; Hydra, OmegaConf and Python versions (Hydra's own conf/ ships with Hydra).

Any change to these is a miss, never a stale config. A command line Hydra must handle itself (a
multirun, an error, see compose_once) is never cached, nor one that copies environment variables
into the config (`hydra.job.env_copy`), nor one that adds to the search path (`hydra.searchpath`:
a user's preset directory, whose files the key does not cover): they compose each time. An
entry that cannot be read (corrupt, from another layout) is composed again and rewritten; a
cache directory that cannot be written leaves runs uncached (apcsim.cachedir).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from dataclasses import astuple, dataclass
from typing import Callable

import hydra
import omegaconf
from omegaconf import DictConfig, OmegaConf

from apcsim.cachedir import cache_dir, memoized
from apcsim.cli.fast_run import RUN_DIR_OVERRIDE, is_plain_run_dir_override
from apcsim.cli.installed import Fingerprint

_LAYOUT = 3  # bump when an entry's layout changes
_RUN_DIR_KEY = "hydra.run.dir=<this run's>"


@dataclass(frozen=True)
class App:
    """The Hydra application, as hydra.main derives it from the task function and its decorator:
    with the installed files it fixes the search path (which Hydra's plugins extend)."""

    calling_file: str | None
    calling_module: str | None
    config_path: str
    config_name: str
    task_name: str


def _run_dir(overrides: list[str]) -> str | None:
    """The command line's one plain `hydra.run.dir=PATH` override, if it has one."""
    dirs = [o for o in overrides if o.startswith(RUN_DIR_OVERRIDE)]
    return dirs[0] if len(dirs) == 1 and is_plain_run_dir_override(dirs[0]) else None


def _extends_search_path(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra.searchpath")


def entry_key(app: App, overrides: list[str], installed: str) -> str:
    """`installed`: the installed files' fingerprint (apcsim.cli.installed)."""
    run_dir = _run_dir(overrides)
    overrides = [_RUN_DIR_KEY if o == run_dir else o for o in overrides]
    return hashlib.sha256(json.dumps([_LAYOUT, hydra.__version__, omegaconf.__version__, sys.version, astuple(app),
                                      overrides, installed]).encode()).hexdigest()


def cached(app: App, overrides: list[str], compose: Callable[[], DictConfig | None],
           installed: Fingerprint) -> DictConfig | None:
    """The config `compose()` returns for this command line (compose_once.compose_for_run's),
    from the cache when it has it; `compose()` runs only on a miss."""
    if any(_extends_search_path(o) for o in overrides):
        return compose()
    entry = cache_dir() / "compose" / f"{entry_key(app, overrides, installed.digest)}.pickle"

    def load(data: bytes) -> DictConfig | None:
        cfg = pickle.loads(data)
        return _as_this_run(cfg, _run_dir(overrides)) if isinstance(cfg, DictConfig) else None

    def dump(cfg: DictConfig | None) -> bytes | None:
        if cfg is None or cfg.hydra.job.env_copy:  # env_copy: composition read the environment
            return None
        OmegaConf.clear_cache(cfg)  # nothing resolved may be kept (resolvers that cache, like ${pid:})
        return pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)

    return memoized(entry, compose, load=load, dump=dump)


def _as_this_run(cfg: DictConfig, run_dir_override: str | None) -> DictConfig:
    """A cached config with this run's working directory and `hydra.run.dir=` override, where
    composition puts them."""
    cfg.hydra.runtime.cwd = os.getcwd()
    if run_dir_override is not None:
        entries = cfg.hydra.overrides.hydra
        k, = (i for i, o in enumerate(entries) if o.startswith(RUN_DIR_OVERRIDE))
        entries[k] = run_dir_override
        cfg.hydra.run.dir = run_dir_override[len(RUN_DIR_OVERRIDE):]
    return cfg
