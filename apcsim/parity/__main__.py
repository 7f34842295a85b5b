"""`python -m apcsim.parity`: replay configs in apcsim and in the real vLLM, step by step.

    python -m apcsim.parity workload=multiturn +policy=lru num_gpu_blocks=48   # one config
    python -m apcsim.parity --scenarios all --out parity_out                 # the matrix
    python -m apcsim.parity --scenarios rag,seed_example_bs8 vllm=v1_early2026  # other rules
    python -m apcsim.parity --list                                           # its scenarios
    python -m apcsim.parity --setup                                          # build the vLLM venv

Prints one table row per replay (vLLM's own prefix-cache counters against apcsim's) and, for a
replay that differs, the first step that differs and how. `--out DIR` also writes parity.md,
parity.csv and each replay's two step logs. Exit status: 0 when every replay is step-identical,
1 when one differs, 2 when a config or the vLLM venv is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra.errors import HydraException

from apcsim.cli.oneline import one_line
from apcsim.errors import ApcsimError, exit_bad_input
from apcsim.parity import table
from apcsim.parity.harness import replay_all
from apcsim.parity.scenarios import SCENARIOS
from apcsim.parity.venv import VLLM_VERSION, VllmUnavailable, check, setup, vllm_python


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apcsim.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="apcsim config overrides of one replay (as python -m apcsim takes)")
    p.add_argument("--scenarios", metavar="NAMES", help="replay these scenarios of the matrix, comma-separated ('all': "
                   "every one); overrides given too are appended to each")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--setup", action="store_true", help=f"build the vLLM {VLLM_VERSION} venv and exit")
    p.add_argument("--vllm-python", type=Path, help="the vLLM venv's python (default: $APCSIM_VLLM_PYTHON or the cache)")
    p.add_argument("--out", type=Path, help="write parity.md, parity.csv and the step logs here")
    return p


def _cases(args) -> list[tuple[str, list[str]]]:
    if args.scenarios:
        names = sorted(SCENARIOS) if args.scenarios == "all" else [n for n in args.scenarios.split(",") if n]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(sorted(SCENARIOS))}")
        return [(n, [*SCENARIOS[n], *args.overrides]) for n in names]
    if not args.overrides:
        raise ValueError("give config overrides of one replay, or --scenarios NAME... (see --help)")
    return [("config", list(args.overrides))]


def _write(out: Path, replays) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.md").write_text(table.markdown(replays))
    (out / "parity.csv").write_text(table.to_csv(replays))
    for r in replays:
        for side, steps in (("apcsim", r.recording.steps), ("vllm", r.vllm["steps"])):
            with (out / f"{r.name}.{side}.jsonl").open("w") as f:
                f.writelines(json.dumps(s) + "\n" for s in steps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, ov in SCENARIOS.items():
            print(f"{name}: {' '.join(ov)}")
        return 0
    try:
        if args.setup:
            print(f"vLLM {VLLM_VERSION} ready: {setup()}")
            return 0
        python = args.vllm_python or vllm_python()
        check(python)
        replays = replay_all(_cases(args), python)
    except (VllmUnavailable, ApcsimError, HydraException, ValueError, RuntimeError) as e:
        exit_bad_input("apcsim.parity", one_line(str(e)))
    print(table.markdown(replays), end="")
    for r in replays:
        if not r.comparison.identical:
            print(f"{r.name}: differs from step {r.comparison.first_diff}: {r.comparison.diff}")
    if args.out:
        _write(args.out, replays)
        print(f"wrote {args.out}/parity.md, parity.csv and the step logs")
    return 0 if all(r.comparison.identical for r in replays) else 1


if __name__ == "__main__":
    sys.exit(main())
