"""One single (not multirun) `python -m apcsim` run of a typed config into its directory: the
simulation, its outputs, status.json and the lines it prints. Both ways a plain run starts
share it: Hydra's task function (apcsim.cli.main) and the Hydra-free fast path
(apcsim.cli.fast_run), so neither can drift from the other. Imports neither Hydra nor OmegaConf.
"""

from __future__ import annotations

import sys
from pathlib import Path

from apcsim.config import SimConfig
from apcsim.errors import ApcsimError, exit_bad_input
from apcsim.interrupt import RunInterrupted


def run_single(cfg: SimConfig, run_dir: Path) -> None:
    """Simulate `cfg` into `run_dir` (absolute). Bad input: status.json "failed", one line on
    stderr, exit 2; an interruption: status.json "interrupted", exit 128 + the signal; a bug: the
    job is marked and the exception passes on. Run under `apcsim.interrupt.interruptible`."""
    from apcsim.outputs.files import write_outputs
    from apcsim.outputs.metrics import summary_line
    from apcsim.outputs.status import write_status
    from apcsim.run import simulate

    try:
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
