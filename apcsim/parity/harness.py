"""Replay configs in apcsim and in vLLM and compare them (the library behind the CLI and tests)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from apcsim.cli.compose import compose_config
from apcsim.parity.compare import Comparison, compare
from apcsim.parity.record import Recording, record
from apcsim.parity.venv import vllm_python

REPLAY_SCRIPT = Path(__file__).with_name("vllm_replay.py")


@dataclass
class Replay:
    name: str
    overrides: list[str]
    recording: Recording
    vllm: dict  # vllm_replay's result: steps, error, vllm_version
    comparison: Comparison


def run_vllm(inputs: list[dict], python: Path | None = None, timeout_s: float = 1800) -> list[dict]:
    """Replay each input in one vLLM process; raises RuntimeError with vLLM's stderr if it fails."""
    python = python or vllm_python()
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.json", Path(d) / "out.json"
        src.write_text(json.dumps({"replays": inputs}))
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": ""}
        r = subprocess.run([str(python), str(REPLAY_SCRIPT), str(src), str(dst)], capture_output=True, text=True,
                           env=env, timeout=timeout_s, cwd=d)
        if r.returncode != 0:
            tail = "\n".join(r.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"the vLLM replay failed (exit {r.returncode}):\n{tail}")
        return json.loads(dst.read_text())["results"]


def record_case(overrides: list[str]) -> Recording:
    """apcsim's side of one replay, from `python -m apcsim` overrides."""
    return record(compose_config(list(overrides) + ["report.enabled=false"]))


def replay_all(cases: list[tuple[str, list[str]]], python: Path | None = None, *,
               vllm_settings: dict[str, dict] | None = None) -> list[Replay]:
    """Record every case in apcsim, replay them all in one vLLM process, compare each.
    `vllm_settings`: case name -> vLLM engine settings forced on vLLM's side only (negative
    controls: a rule apcsim drops that vLLM keeps)."""
    recordings = [record_case(ov) for _, ov in cases]
    inputs = []
    for (name, _), rec in zip(cases, recordings):
        inp = rec.replay_input()
        inp["config"] = {**inp["config"], **(vllm_settings or {}).get(name, {})}
        inputs.append(inp)
    results = run_vllm(inputs, python)
    out = []
    for (name, ov), rec, res in zip(cases, recordings, results):
        out.append(Replay(name, list(ov), rec, res, compare(rec.steps, res["steps"], res["error"])))
    return out
