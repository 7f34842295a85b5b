"""`python -m apcsim.calibration hardware=a100 model=llama3_8b`: writes calibration.json in the
Hydra run directory (held-out fit errors per op, whole-step predictions, physics checks).

Keys: `hardware`, `model` (apcsim's groups), `profile` (a CSV path; unset: the bundled profile of
hardware/model), `tp` (1), `holdout_fraction` (0.2), `seed` (0). Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.config import register_configs
from apcsim.errors import ApcsimError, exit_bad_input
from apcsim.hardware import HardwareConfig, ModelConfig

PROG = "apcsim.calibration"


@dataclass
class CalibrationConfig:
    hardware: HardwareConfig = MISSING
    model: ModelConfig = MISSING
    profile: Optional[str] = None
    tp: int = 1  # the tensor-parallel degree the profile was measured at
    holdout_fraction: float = 0.2
    seed: int = 0


register_configs()
ConfigStore.instance().store(name="calibration_schema", node=CalibrationConfig)


def _table(result: dict) -> str:
    lines = [f"{'op':<26} {'median %':>9} {'p90 %':>7} {'held out':>9}"]
    for op, e in result["ops"].items():
        lines.append(f"{op:<26} {e['median_ape_pct']:9.2f} {e['p90_ape_pct']:7.2f} {e['n_holdout']:9d}")
    lines.append("")
    lines += [f"{name:<26} {ms:10.2f} ms" for name, ms in result["predictions_ms"].items()]
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="../conf", config_name="calibration")
def main(dcfg: DictConfig) -> None:
    from apcsim.calibration.report import calibrate

    try:
        cfg: CalibrationConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        result = calibrate(cfg.hardware, cfg.model, cfg.profile, cfg.holdout_fraction, cfg.seed, cfg.tp)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    except ApcsimError as e:
        exit_bad_input(PROG, str(e))
    print(_table(result))
    print(f"wrote {run_dir / 'calibration.json'}")


def entry() -> None:
    run_with_one_line_errors(main, PROG)


if __name__ == "__main__":
    entry()
