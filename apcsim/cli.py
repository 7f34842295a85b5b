"""`python -m apcsim`: the Hydra entry point.

Bad input of any kind ends in one line on stderr and exit status 2: apcsim's own checks raise
`ApcsimError`, and Hydra's composition errors (unknown option, wrong type) are folded to one line.
"""

from __future__ import annotations

import io
import os
import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apcsim.config import SimConfig, register_configs
from apcsim.errors import ApcsimError

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


def _one_line(text: str) -> str:
    """Fold Hydra's multi-line error into one line: the message and the options it lists."""
    head: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR", "Traceback")):
            continue
        if line.startswith(("Config search path", "full_key:", "object_type=", "reference_type")):
            break
        line = re.sub(r"^In '[^']*': ", "", line)
        if raw.startswith("\t") and head:
            options.append(line)  # an indented list, e.g. the available options of a group
        else:
            head.append(line)
    msg = "; ".join(head) or text.strip()
    if options:
        msg = msg.rstrip(":") + ": " + ", ".join(options)
    return re.sub(r"[.:]\s*;", ";", msg)


def entry() -> None:
    real_err = sys.stderr
    buf = io.StringIO()
    sys.stderr = buf
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stderr = real_err
    text = buf.getvalue()
    if code == 0 or os.environ.get("HYDRA_FULL_ERROR") == "1":
        real_err.write(text)  # success, or the user asked for Hydra's full error
        if code:
            sys.exit(code)
        return
    if text.startswith("apcsim: error:"):
        real_err.write(text.splitlines()[0] + "\n")
    else:
        real_err.write(f"apcsim: error: {_one_line(text)}\n")
    sys.exit(2)
