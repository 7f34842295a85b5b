"""The engine's Hydra entry point. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apcsim.cli.config_keys import check_known_keys
from apcsim.cli.oneline import run_with_one_line_errors
from apcsim.errors import ApcsimError, ConfigError, exit_bad_input
from apcsim.outputs.metrics import summary_line
from engine.config import EngineConfig, register_engine_config

register_engine_config()


@hydra.main(version_base=None, config_path="pkg://apcsim.conf", config_name="engine")
def main(dcfg: DictConfig) -> None:
    from apcsim.outputs.status import write_status

    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def fail(msg: str) -> None:
        write_status(run_dir, "failed", msg)
        exit_bad_input("engine", msg)

    try:
        check_known_keys(dcfg)
        require_torch()
        from engine.runner import run_engine, write_engine_outputs

        cfg: EngineConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out = run_engine(cfg)
        write_engine_outputs(out, run_dir, cfg)
    except ApcsimError as e:
        fail(str(e))
    except MemoryError:
        fail(f"out of memory (MemoryError) in {run_dir}: the model or the KV cache does not fit this machine; "
             "use model=tiny or lower num_gpu_blocks/cpu_kv_cache_mib")
    except Exception as e:  # a bug: keep the traceback, but mark the run
        write_status(run_dir, "failed", f"{type(e).__name__}: {e}")
        raise
    c = out.metrics["config"]
    print("engine " + summary_line(out.metrics, clock="measured", where=f" model={c['model']} on {c['device']}"))
    print(f"outputs in {run_dir}")


def require_torch() -> None:
    """The engine needs the `engine` extra (torch, triton, safetensors); the simulator does not."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the engine needs PyTorch, which is not installed ({e}); install the engine extra: "
                          "pip install -e '.[engine]'") from None


def entry() -> None:
    run_with_one_line_errors(main, "engine")
