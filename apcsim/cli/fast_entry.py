"""Record, from a Hydra run of a plain command line, the entry a later run of the same line
starts from without Hydra (apcsim.cli.fast_run, whose module doc says what an entry holds).

Recorded only where replaying it gives what Hydra would, else not at all (the line keeps going
through Hydra): no environment set or copied, no change of directory, no verbose logging, no
search path of the user's, apcsim's own two callbacks only, no interpolation left in the job's
config (a resolved `${now:}` or `${hydra:...}` would be stale), logging configs of the standard
handlers with no interpolation but the output directory and the job name, and the three
values the blanks stand for each found once, where Hydra writes them, in hydra.yaml. A run
directory named by a template (the default one) is recorded as composed, where it is one that
apcsim.cli.fast_run resolves as Hydra does (`is_template`) and the command line's, if it gave one.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from apcsim.cachedir import store_atomic
from apcsim.cli.fast_run import (
    CWD,
    OUTPUT_DIR,
    RUN_DIR,
    FastEntry,
    entry_path,
    is_plain_path,
    is_template,
    map_strings,
    plain_run_dir,
)
from apcsim.cli.installed import Fingerprint
from apcsim.config import SimConfig

_CALLBACKS = {"run_dir_lock": {"_target_": "apcsim.outputs.rundir_lock.RunDirLock"},
              "sweep_report": {"_target_": "apcsim.sweep.callback.SweepReportCallback", "html": True}}
_HANDLERS = {"logging.StreamHandler", "logging.FileHandler"}
_STREAMS = {"ext://sys.stdout", "ext://sys.stderr"}


def recorder(args: list[str], cfg: DictConfig, installed: Fingerprint) -> Callable[[SimConfig], None] | None:
    """For Hydra's task function (apcsim.cli.main's `on_config`): records the entry of this
    command line once the run's typed config passed its checks, or None where the line is not
    plain. `cfg`: the composed config `run_job` runs (it fills in hydra.runtime.output_dir);
    `installed`: the command's fingerprint, taken before composing (its cache key used it)."""
    run_dir = plain_run_dir(args)
    if run_dir is None:
        return None

    def record(config: SimConfig) -> None:
        entry = make_entry(cfg, config, run_dir)
        if entry is not None:
            store_atomic(entry_path(args, installed.digest), pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))

    return record


def _standard_logging(conf: dict) -> bool:
    handlers = conf.get("handlers") or {}
    return ("filters" not in conf and "()" not in repr(conf)
            and all(h.get("class") in _HANDLERS and h.get("stream", "ext://sys.stdout") in _STREAMS
                    for h in handlers.values()))


def _job_logging(cfg: DictConfig) -> dict | None:
    """hydra.job_logging resolved, with the OUTPUT_DIR blank, or None where it cannot be."""
    name = str(cfg.hydra.job.name)
    ok = True

    def fill(value: str) -> str:
        nonlocal ok
        out = value.replace("${hydra.runtime.output_dir}", OUTPUT_DIR).replace("${hydra.job.name}", name)
        ok = ok and "$" not in out and "\\" not in out
        return out

    conf = map_strings(OmegaConf.to_container(cfg.hydra.job_logging, resolve=False), fill)
    return conf if ok and isinstance(conf, dict) else None


def _blank(text: str, values: list[tuple[str, str, str]]) -> str | None:
    """`text` with each (before, value, after) found exactly once and its value made a blank."""
    for before, value, blank in values:
        found = f"\n{before}{value}\n"
        if text.count(found) != 1:
            return None
        text = text.replace(found, f"\n{before}{blank}\n")
    return text


def _run_dir_template(cfg: DictConfig, given: str) -> str | None | bool:
    """hydra.run.dir's template (None: the plain path the command line `given`), or False where
    the run directory is neither (nor the one run_job made)."""
    h = cfg.hydra
    composed = OmegaConf.to_container(h.run, resolve=False)["dir"]  # type: ignore[index]
    if os.path.abspath(str(h.run.dir)) != str(h.runtime.output_dir):  # resolved as the run resolved it (cached)
        return False
    if is_plain_path(given):
        return None if composed == given else False
    return composed if isinstance(composed, str) and is_template(composed) and given in ("", composed) else False


def make_entry(cfg: DictConfig, config: SimConfig, run_dir: str) -> FastEntry | None:
    """`run_dir`: the command line's hydra.run.dir (plain_run_dir's)."""
    h = cfg.hydra
    cwd, output_dir = str(h.runtime.cwd), str(h.runtime.output_dir)
    template = _run_dir_template(cfg, run_dir)
    if (h.job.env_set or h.job.env_copy or h.job.chdir or h.verbose or h.searchpath or template is False
            or not is_plain_path(cwd) or not is_plain_path(output_dir) or h.hydra_logging is None
            or h.job_logging is None or OmegaConf.to_container(h.callbacks, resolve=False) != _CALLBACKS):
        return None
    hydra_logging = OmegaConf.to_container(h.hydra_logging, resolve=True)
    job_logging = _job_logging(cfg)
    if job_logging is None or not _standard_logging(job_logging) or not _standard_logging(hydra_logging):
        return None
    if h.output_subdir is None:  # no .hydra/: nothing shows whether the job's config interpolates
        return None
    subdir = str(h.output_subdir)
    try:  # as run_job wrote them before calling the task function
        texts = {name: (Path(output_dir) / subdir / name).read_text(encoding="utf-8")
                 for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    except OSError:
        return None
    # A template is written as composed, the same for every run: no blank.
    path_blanks = [] if template is not None else [("  run:\n    dir: ", run_dir, RUN_DIR),
                                                   ("    - hydra.run.dir=", run_dir, RUN_DIR)]
    hydra_yaml = _blank(texts["hydra.yaml"], [*path_blanks, ("    cwd: ", cwd, CWD),
                                              ("    output_dir: ", output_dir, OUTPUT_DIR)])
    if hydra_yaml is None or "${" in texts["config.yaml"]:
        return None
    return FastEntry(config, texts["config.yaml"], hydra_yaml, texts["overrides.yaml"], subdir,
                     hydra_logging, job_logging, template)
