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
from omegaconf import DictConfig, OmegaConf

from apcsim.config import SimConfig, register_configs
from apcsim.errors import ApcsimError
from apcsim.oneline import run_with_one_line_errors

log = logging.getLogger("apcsim")

register_configs()


def _summary_line(m: dict) -> str:
    ttft = m["ttft_s"]["p50"]
    rejected = f", {m['num_rejected']} rejected" if m["num_rejected"] else ""
    return (
        f"{m['config']['workload']} policy={m['config']['policy']} block_size={m['config']['block_size']}: "
        f"{m['num_finished']}/{m['num_requests']} finished{rejected}, hit rate {m['prefix_cache_hit_rate']:.3f}, "
        f"{m['prompt_tokens_computed']} prompt tokens computed, {m['num_preemptions']} preemptions, "
        f"TTFT p50 {'n/a' if ttft is None else f'{ttft:.3f}s'}, {m['output_throughput_tok_s']:.0f} output tok/s "
        f"over {m['duration_s']:.1f}s simulated"
    )


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    from apcsim.run import simulate, write_outputs

    try:
        cfg: SimConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out = simulate(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        write_outputs(out, run_dir, cfg)
    except ApcsimError as e:
        print(f"apcsim: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(_summary_line(out.metrics))
    print(f"outputs in {run_dir}")


def entry() -> None:
    run_with_one_line_errors(main, "apcsim")
