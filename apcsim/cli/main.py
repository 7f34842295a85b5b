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
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from apcsim.cli.config_keys import check_known_keys
from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.config import SimConfig, register_configs
from apcsim.errors import ApcsimError, exit_bad_input
from apcsim.interrupt import RunInterrupted, interruptible
from apcsim.outputs.metrics import summary_line

log = logging.getLogger("apcsim")

register_configs()


CONFIG_PATH, CONFIG_NAME = "../conf", "config"


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(dcfg: DictConfig) -> float | None:
    from apcsim.outputs.files import write_outputs
    from apcsim.outputs.status import write_status
    from apcsim.run import simulate

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
            out = simulate(cfg, requests_csv=run_dir / "requests.csv")
            write_outputs(out, run_dir, cfg)
        except ApcsimError as e:
            write_status(run_dir, "failed", str(e))
            exit_bad_input("apcsim", str(e))
        except MemoryError:
            msg = (f"out of memory (MemoryError) in {run_dir}: the workload or the cache does not fit this "
                   "machine; lower workload.num_requests, num_gpu_blocks or the lengths")
            write_status(run_dir, "failed", msg)
            exit_bad_input("apcsim", msg)
        except RunInterrupted as e:  # before the run started or while writing its outputs
            write_status(run_dir, "interrupted", str(e))
            print(f"apcsim: {e}; nothing complete in {run_dir}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Exception as e:  # a bug: keep the traceback, but mark the job
            write_status(run_dir, "failed", f"{type(e).__name__}: {e}")
            raise
    print(summary_line(out.metrics, clock="simulated"))
    if out.interrupted is not None:
        done = out.metrics["num_finished"] + out.metrics["num_rejected"]
        print(f"apcsim: {out.interrupted} after {done} of {out.metrics['num_requests']} requests; "
              f"partial outputs in {run_dir} (status.json: interrupted)", file=sys.stderr)
        sys.exit(out.interrupted.exit_code)
    print(f"outputs in {run_dir}")
    return None


def entry() -> None:
    from apcsim.cli.compose_once import run_main
    from apcsim.cli.listing import listing, wants_listing

    if wants_listing(sys.argv[1:]):  # `--help` / `list`: keys and registered options, not Hydra's dump
        print(listing(), end="")
        return
    # A plain run composes its config once; anything else goes through hydra.main (see compose_once).
    run_with_one_line_errors(lambda: run_main(main, main.__wrapped__, CONFIG_PATH, CONFIG_NAME), "apcsim")
