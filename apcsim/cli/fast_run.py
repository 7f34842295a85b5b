"""A plain run whose command line ran before, started without Hydra or OmegaConf.

Importing Hydra, composing and Hydra's job runner (copying the config three times, writing it
as YAML) were most of a short run's start-up. For a plain command line (overrides only, no flag,
no `hydra...` override but at most one `hydra.run.dir=`, a plain PATH or a template), everything
Hydra does before the task function is fixed by the command line and the installed files, but
for the run directory and the working directory. So the first Hydra run of such a line records
(apcsim.cli.fast_entry) what it made: the typed config it ran, the three files of `.hydra/`
(hydra.yaml with the working directory, the output directory and a plain PATH left as blanks),
the resolved logging configs, and the run directory's template where it has one; a later run of
the same line does what Hydra's would with them, in Hydra's order:

  Hydra's logging; the run directory held and status.json "running" (RunDirLock.on_run_start);
  the output directory; the job's logging (the job log file); .hydra/config.yaml, hydra.yaml,
  overrides.yaml; the task (apcsim.cli.single_run, Hydra's task function's own body); loggers
  flushed; the directory released.

A template is a run directory named after the time and the process, as the default
`outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${pid:}` (apcsim/conf/config.yaml): path characters and
the interpolations `${now:PATTERN}` (Hydra's resolver: datetime.now().strftime(PATTERN); PATTERN
of `%`, letters, digits, `-` and `_`) and `${pid:}` (apcsim.config's: os.getpid()) only. It is
kept as written in hydra.yaml (hydra.run.dir, and the override), so the recorded text holds for
every run; the directory is resolved as OmegaConf resolves it, left to right, each distinct
interpolation once (both resolvers cache), and where the result is not a plain path the run goes
through Hydra.

An entry is keyed like a composed config (apcsim.cli.compose_cache): the overrides, with a plain
run directory's path left out (a template is kept: hydra.yaml holds it), and the installed files'
fingerprint (apcsim.cli.installed), so any change to the code or the configs is a miss. Anything
else goes through Hydra as before: a miss, a flag, another `hydra` override, a `hydra.run.dir`
that is neither a plain path (one YAML would quote, see `_PLAIN_PATH`) nor a template, an
unreadable entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from apcsim.cachedir import cache_dir
from apcsim.cli.installed import Fingerprint
from apcsim.config import SimConfig

_LAYOUT = 2  # bump when an entry's layout changes
RUN_DIR_OVERRIDE = "hydra.run.dir="
# Paths YAML writes as they are (no quotes, no line folding): ASCII letters, digits, _ . - /, at
# least one '/' (so never a number, bool or null), not starting with a document marker. The
# blanks of hydra.yaml are filled with such paths only, so the file is the one Hydra would write.
_PLAIN_PATH = re.compile(r"(?!---|\.\.\.)[\w./-]*/[\w./-]*", re.ASCII)
# A template's interpolations (the module doc); group 1: now's pattern (None: ${pid:}).
_INTERPOLATION = re.compile(r"\$\{now:([%\w-]*%[%\w-]*)\}|\$\{pid:\}", re.ASCII)
_LITERAL = re.compile(r"[\w./-]*", re.ASCII)
# The blanks of a recorded hydra.yaml and job logging config (NUL never appears in YAML's output).
RUN_DIR, CWD, OUTPUT_DIR = "\0run_dir\0", "\0cwd\0", "\0output_dir\0"


@dataclass(frozen=True)
class FastEntry:
    """What a Hydra run of a plain command line made before its task function ran."""

    config: SimConfig  # what the task function runs
    config_yaml: str  # .hydra/config.yaml
    hydra_yaml: str  # .hydra/hydra.yaml with the RUN_DIR, CWD and OUTPUT_DIR blanks
    overrides_yaml: str  # .hydra/overrides.yaml
    output_subdir: str  # hydra.output_subdir (.hydra)
    hydra_logging: dict  # hydra.hydra_logging, resolved
    job_logging: dict  # hydra.job_logging, resolved but for the OUTPUT_DIR blank
    # hydra.run.dir as composed where it is a template (resolved at each run); None: the command
    # line's plain path (the RUN_DIR blank)
    run_dir_template: str | None


def plain_run_dir(args: list[str]) -> str | None:
    """The value of a plain command line's `hydra.run.dir=` (a plain path or a template; ""
    where it has none: the config's own, a template), or None where the command line is not
    plain (see the module doc)."""
    run_dirs = [a for a in args if a.startswith(RUN_DIR_OVERRIDE)]
    if len(run_dirs) > 1:
        return None
    for a in args:
        if a.startswith("-") or (a not in run_dirs and a.lstrip("+~").startswith("hydra")):
            return None
    if not run_dirs:
        return ""
    value = run_dirs[0][len(RUN_DIR_OVERRIDE):]
    return value if is_plain_path(value) or is_template(value) else None


def is_plain_path(path: str) -> bool:
    return _PLAIN_PATH.fullmatch(path) is not None


def is_plain_run_dir_override(arg: str) -> bool:
    """`hydra.run.dir=PATH` of a plain path: Hydra's override parser reads it as exactly PATH
    (no quoting, interpolation or sweep syntax), and YAML writes it as it is. Both caches leave
    such a path out of their keys (this one's and apcsim.cli.compose_cache's)."""
    return arg.startswith(RUN_DIR_OVERRIDE) and is_plain_path(arg[len(RUN_DIR_OVERRIDE):])


def is_template(value: str) -> bool:
    """A run directory of path characters, `${now:PATTERN}` and `${pid:}`, with at least one of
    the two (module doc)."""
    return _INTERPOLATION.search(value) is not None and _LITERAL.fullmatch(_INTERPOLATION.sub("", value)) is not None


def resolve_template(template: str) -> str:
    """The run directory Hydra names after `template` now: OmegaConf resolves a string's
    interpolations left to right, and a resolver that caches (Hydra's `now`, apcsim's `pid`)
    is called once per distinct argument, each `now` reading the clock when it is called."""
    resolved: dict[str, str] = {}

    def value(m: re.Match) -> str:
        if m.group(0) not in resolved:
            resolved[m.group(0)] = str(os.getpid()) if m.group(1) is None else datetime.now().strftime(m.group(1))
        return resolved[m.group(0)]

    return _INTERPOLATION.sub(value, template)


def entry_path(args: list[str], installed: str) -> Path:
    """Where a plain command line's entry is kept (a plain run directory's path left out), for
    the installed files' fingerprint `installed` (apcsim.cli.installed)."""
    overrides = ["<run dir>" if is_plain_run_dir_override(a) else a for a in args]
    h = hashlib.sha256(json.dumps([_LAYOUT, sys.version, overrides, installed]).encode())
    return cache_dir() / "fast" / f"{h.hexdigest()}.pickle"


def _load(entry: Path) -> FastEntry | None:
    try:
        value = pickle.loads(entry.read_bytes())
    except Exception:  # absent, unreadable, of another layout: Hydra's path (which rewrites it)
        return None
    return value if isinstance(value, FastEntry) else None


def try_fast_run(args: list[str], installed: Fingerprint) -> bool:
    """Run this command line without Hydra if it can be; False (nothing done) where it cannot."""
    run_dir = plain_run_dir(args)
    if run_dir is None or not is_plain_path(os.getcwd()):
        return False
    try:
        entry = _load(entry_path(args, installed.digest))
    except OSError:  # a file vanished or cannot be read while the key is made: Hydra's path
        return False
    if entry is None or (entry.run_dir_template is None) != is_plain_path(run_dir):
        return False
    if entry.run_dir_template is not None:
        run_dir = resolve_template(entry.run_dir_template)
        if not is_plain_path(run_dir):
            return False
    if not is_plain_path(os.path.abspath(run_dir)):
        return False
    _run(entry, run_dir)
    return True


def map_strings(value, fn):
    """`value` (a logging config: dicts, lists, strings, other scalars) with `fn` applied to each
    string in it."""
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def _flush_loggers() -> None:
    """As Hydra does after the task: every handler flushed."""
    import logging

    for ref in logging._handlerList:  # type: ignore[attr-defined]
        try:
            ref().flush()
        except Exception:  # as Hydra: a handler that cannot flush is not the run's failure
            pass


def _run(entry: FastEntry, run_dir: str) -> None:
    """What Hydra (1.3) and apcsim's callbacks do for a run of the recorded config (module doc)."""
    import logging.config

    from apcsim.cli.single_run import run_single
    from apcsim.interrupt import interruptible
    from apcsim.outputs.rundir import hold_or_exit, release
    from apcsim.outputs.status import write_running

    cwd, output_dir = os.getcwd(), os.path.abspath(run_dir)
    hydra_config = sys.modules.get("hydra.core.hydra_config")
    if hydra_config is not None:  # an earlier Hydra run in this process (tests): its config is not this run's
        hydra_config.HydraConfig.instance().cfg = None
    logging.config.dictConfig(entry.hydra_logging)
    hold_or_exit(Path(run_dir), "hydra.run.dir", "apcsim")
    write_running(Path(run_dir))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    logging.config.dictConfig(map_strings(entry.job_logging, lambda s: s.replace(OUTPUT_DIR, output_dir)))
    hydra_yaml = entry.hydra_yaml.replace(RUN_DIR, run_dir).replace(CWD, cwd).replace(OUTPUT_DIR, output_dir)
    subdir = Path(output_dir) / entry.output_subdir
    for name, text in (("config.yaml", entry.config_yaml), ("hydra.yaml", hydra_yaml),
                       ("overrides.yaml", entry.overrides_yaml)):
        subdir.mkdir(parents=True, exist_ok=True)
        with open(subdir / name, "w", encoding="utf-8") as f:
            f.write(text)
    try:
        with interruptible():
            run_single(entry.config, Path(output_dir))
    except Exception:  # a bug (run_single marked the job): reported as Hydra's runner does
        _flush_loggers()
        release(Path(run_dir))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        import traceback

        traceback.print_exc()
        sys.exit(1)
    _flush_loggers()
    release(Path(run_dir))
