"""`python -m apcsim`: the Hydra entry point.

Bad input of any kind ends in one line on stderr and exit status 2: apcsim's own checks raise
`ApcsimError`, and Hydra's composition errors (unknown option, wrong type) are folded to one line.
A run holds its directory (apcsim.outputs.rundir: a second run into it stops with exit 2) and marks
status.json "running" before Hydra writes there; every run (each job of a multirun) ends with
`status.json` in its output directory: "ok",
"failed" (with the error) or "interrupted" (SIGINT/SIGTERM: the requests done so far are in
requests.csv and metrics.json; the process exits 128 + the signal, which also ends a multirun).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from apcsim.cli.config_keys import check_known_keys
from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.cli.single_run import run_single
from apcsim.config import SimConfig, register_configs
from apcsim.errors import ApcsimError, exit_bad_input
from apcsim.interrupt import interruptible

if TYPE_CHECKING:
    from apcsim.cli.installed import Fingerprint

log = logging.getLogger("apcsim")

register_configs()


CONFIG_PATH, CONFIG_NAME = "../conf", "config"


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(dcfg: DictConfig, on_config: Callable[[SimConfig], None] | None = None) -> float | None:
    """Hydra's task function. `on_config`: called with a single run's typed config once it has
    passed every check that composition's result alone decides (the CLI's fast path records it)."""
    from apcsim.outputs.status import write_status

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        check_known_keys(dcfg)  # before a sweep's first job too: every job would have it
    except ApcsimError as e:
        write_status(run_dir, "failed", str(e))
        exit_bad_input("apcsim", str(e))
    with interruptible():
        if hc.mode == RunMode.MULTIRUN:
            # One job of a sweep: a failure is recorded in its directory and the sweep goes on;
            # an interruption marks the job and ends the sweep.
            from apcsim.sweep.job import run_multirun_job

            return run_multirun_job(dcfg, run_dir)
        try:
            cfg: SimConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        except Exception as e:  # a bug: keep the traceback, but mark the job
            write_status(run_dir, "failed", f"{type(e).__name__}: {e}")
            raise
        if on_config is not None:
            on_config(cfg)
        run_single(cfg, run_dir)
    return None


def run_hydra(installed: Fingerprint) -> None:
    """The command line through Hydra: a plain run composes its config once, anything else goes
    through hydra.main (see compose_once). `installed`: the command's fingerprint."""
    from apcsim.cli.compose_once import run_main

    run_with_one_line_errors(lambda: run_main(main, main.__wrapped__, CONFIG_PATH, CONFIG_NAME, installed), "apcsim")
