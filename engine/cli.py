"""The engine's Hydra entry point. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apcsim.errors import ApcsimError
from apcsim.metrics import summary_line
from apcsim.oneline import run_with_one_line_errors
from engine.runner import EngineConfig, register_engine_config

register_engine_config()


@hydra.main(version_base=None, config_path="pkg://apcsim.conf", config_name="engine")
def main(dcfg: DictConfig) -> None:
    from engine.runner import run_engine, write_engine_outputs

    try:
        cfg: EngineConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out = run_engine(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        write_engine_outputs(out, run_dir, cfg)
    except ApcsimError as e:
        print(f"engine: error: {e}", file=sys.stderr)
        sys.exit(2)
    c = out.metrics["config"]
    print("engine " + summary_line(out.metrics, clock="measured", where=f" model={c['model']} on {c['device']}"))
    print(f"outputs in {run_dir}")


def entry() -> None:
    run_with_one_line_errors(main, "engine")
