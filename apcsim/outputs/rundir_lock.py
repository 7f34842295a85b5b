"""`RunDirLock`, the Hydra callback (apcsim/conf/config.yaml and engine.yaml) that holds a run's
directory (apcsim.outputs.rundir): `hydra.run.dir` (a single run) or `hydra.sweep.dir` (a
multirun: its jobs run under it), and marks a single run's status.json "running" with its pid.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from apcsim.errors import exit_bad_input
from apcsim.outputs.rundir import hold_or_exit, release


def _hydra_override(config: DictConfig, key: str) -> str | None:
    """The command-line override of `key` (e.g. "hydra.run.dir=X"), if the user gave one."""
    for o in config.hydra.overrides.hydra:
        if str(o).split("=", 1)[0].lstrip("+~") == key:
            return str(o)
    return None


class RunDirLock(Callback):
    """Hold the run (or sweep) directory before Hydra writes into it; see the module doc."""

    def __init__(self, prog: str = "apcsim") -> None:
        self.prog = prog

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        from apcsim.outputs.status import write_running

        given = _hydra_override(config, "hydra.sweep.dir")
        if given:  # Hydra would ignore it: a single run writes to hydra.run.dir
            exit_bad_input(self.prog, f"{given} applies to a multirun (-m); a single run writes to hydra.run.dir: "
                           "use hydra.run.dir=..., or add -m")
        HydraConfig.instance().set_config(config)  # run.dir may use ${hydra:...}, as run_job allows
        run_dir = Path(str(config.hydra.run.dir))
        hold_or_exit(run_dir, "hydra.run.dir", self.prog)
        write_running(run_dir)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        release(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        given = _hydra_override(config, "hydra.run.dir")
        if given:  # Hydra would ignore it: a multirun writes under hydra.sweep.dir
            exit_bad_input(self.prog, f"{given} applies to a single run; a multirun (-m or an experiment's "
                           "hydra.mode=MULTIRUN) writes its jobs under hydra.sweep.dir: use hydra.sweep.dir=...")
        hold_or_exit(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir", self.prog)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        release(Path(str(config.hydra.sweep.dir)))
