#!/usr/bin/env bash
# Fetch, here, the wheels the lent GPU machine needs but its image lacks, into .whl/ (ignored by
# git), for `bash bench/gpu_session.sh` with carry: [".whl"]. The image (Python 3.12, torch 2.11,
# Triton 3.6, NumPy 2.5, scipy, pyyaml, tqdm, pytest) has no hydra-core, omegaconf, antlr4,
# simpy, plotly (nor narwhals, which plotly needs) and no xxhash. Extra package names given as
# arguments are fetched too.
# Adapted from the project's shared tool ../shared/tools/device-wheels.sh (same approach: build
# pure-Python wheels here, download the compiled ones for CPython 3.12 on x86-64), copied so that
# the repository needs nothing outside itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
grep -qx '/.whl/' "$ex" 2>/dev/null || echo '/.whl/' >> "$ex"
rm -rf .whl && mkdir -p .whl
quiet() {  # pip's "Location ... is ignored" lines about local indexes are noise; its status is kept
  "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
# Pure Python: antlr4-python3-runtime 4.9.3, which hydra-core 1.3 pins, ships no wheel: build one.
quiet python3 -m pip wheel -q --no-deps -w .whl "hydra-core==1.3.*" "omegaconf==2.3.*" "antlr4-python3-runtime==4.9.3" \
  simpy plotly narwhals "$@"
# Compiled: the device runs CPython 3.12 on x86-64.
quiet python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl xxhash
ls -1 .whl
du -sh .whl
