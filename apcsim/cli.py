"""`python -m apcsim`: the Hydra entry point.

Bad input of any kind ends in one line on stderr and exit status 2: apcsim's own checks raise
`ApcsimError`, and Hydra's composition errors (unknown option, wrong type) are folded to one line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from apcsim.config import SimConfig, register_configs
from apcsim.errors import ApcsimError
from apcsim.metrics import summary_line
from apcsim.oneline import run_with_one_line_errors

log = logging.getLogger("apcsim")

register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(dcfg: DictConfig) -> float | None:
    from apcsim.run import simulate, write_outputs

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # One job of a sweep: its failure is recorded in its directory and the sweep goes on.
        from apcsim.job import run_multirun_job

        return run_multirun_job(dcfg, Path(hc.runtime.output_dir))
    try:
        cfg: SimConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out = simulate(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        write_outputs(out, run_dir, cfg)
    except ApcsimError as e:
        print(f"apcsim: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary_line(out.metrics, clock="simulated"))
    print(f"outputs in {run_dir}")
    return None


def entry() -> None:
    run_with_one_line_errors(main, "apcsim")
