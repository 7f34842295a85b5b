"""A plain `python -m apcsim ...` run with its config composed once instead of twice.

Hydra's entry point (hydra.main, 1.3) composes the whole config twice for every run: once only to
read `hydra.mode` (a preset may turn any command line into a multirun) and once to run it. For a
short run that second composition is a tenth of the process's CPU time. This takes Hydra's own
steps (the same argument parser, search path, Hydra object, composition, callbacks and job runner)
but composes once, in run mode, and reads the mode off that config:

- the config sets no mode: Hydra would compose again with `hydra.mode=RUN` appended to the
  overrides; that override only sets `hydra.mode` and is the last of `hydra.overrides.hydra`, so
  it is applied to the composed config instead (tests compare the two over many command lines);
- the config says RUN: it is the config Hydra runs;
- anything else goes through hydra.main untouched: a multirun (by flag or by a preset), every
  other Hydra flag (--cfg, --info, --config-dir, ...), a composition that fails (Hydra words
  the error), verbose Hydra logging.

A plain run's config is cached on disk (apcsim.cli.compose_cache), so a repeated command line
does not compose at all, nor create Hydra's config loader (whose search path scans every
installed Hydra plugin).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    detect_task_name,
    get_args_parser,
    run_and_report,
)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime, configure_log, run_job, setup_globals
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig

from apcsim.cli.compose_cache import App, cached
from apcsim.cli.fast_entry import recorder
from apcsim.cli.installed import Fingerprint

# Flags of Hydra's argument parser that make a command line more than a plain run (--run is one).
_NOT_PLAIN = ("help", "hydra_help", "cfg", "resolve", "package", "multirun", "shell_completion", "config_path",
              "config_name", "config_dir", "experimental_rerun", "info")


def compose_for_run(hydra: Hydra, config_name: str, overrides: list[str]) -> DictConfig | None:
    """The config `Hydra.run` would compose for these overrides, or None where only Hydra's own
    path (get_mode, then run or multirun) gives the right behaviour."""
    try:
        cfg = hydra.compose_config(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN)
    except Exception:  # Hydra's path composes it again and reports the error its way
        return None
    if cfg.hydra.verbose:  # Hydra's debug log lists the overrides it composed with
        return None
    if cfg.hydra.mode is None:
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    return cfg if cfg.hydra.mode == RunMode.RUN else None


def run_composed(cfg: DictConfig, app: App, task_function: TaskFunction) -> None:
    """What Hydra (1.3) does with a run's composed config: its globals and job name as the Hydra
    object sets them, logging as composition sets it up, then `Hydra.run` (callbacks around
    `run_job`). No Hydra object: it would scan every installed plugin, which a run does not use
    (its launcher and sweeper are a multirun's)."""
    setup_globals()
    JobRuntime().set("name", app.task_name)
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=app.config_name)
    ret = run_job(hydra_context=HydraContext(config_loader=None, callbacks=callbacks),  # type: ignore[arg-type]
                  task_function=task_function, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                  configure_logging=True)
    callbacks.on_run_end(config=cfg, config_name=app.config_name, job_return=ret)
    _ = ret.return_value  # raises the job's exception, as Hydra.run does


def run_main(decorated_main: Callable[[], None], task_function: TaskFunction, config_path: str,
             config_name: str, installed: Fingerprint) -> None:
    """`decorated_main` is `task_function` under `@hydra.main(config_path=..., config_name=...)`;
    `installed`: this command's fingerprint (the fast path may have read it already)."""
    args = get_args_parser().parse_args()
    if any(getattr(args, flag) for flag in _NOT_PLAIN):
        decorated_main()
        return
    # As hydra._internal.utils._run_hydra sets up a run.
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(task_function)
    app = App(calling_file, calling_module, config_path, config_name, detect_task_name(calling_file, calling_module))

    def compose() -> DictConfig | None:  # a cache miss
        search_path = create_automatic_config_search_path(calling_file, calling_module, config_path)
        hydra = run_and_report(lambda: Hydra.create_main_hydra2(task_name=app.task_name, config_search_path=search_path))
        return compose_for_run(hydra, config_name, args.overrides)

    try:
        cfg = cached(app, args.overrides, compose, installed)
        if cfg is not None:
            # A plain line's first run records what a later one starts from (apcsim.cli.fast_run).
            record = recorder(args.overrides, cfg, installed)
            task = task_function if record is None else partial(task_function, on_config=record)
            run_and_report(lambda: run_composed(cfg, app, task))
            return
    finally:
        GlobalHydra.instance().clear()
    decorated_main()
