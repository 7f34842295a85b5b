#!/usr/bin/env bash
# Every GPU measurement the open issues (4: engine performance, 5: H100 profile and validation)
# still need, in phases that each fit one `device` call (10 minutes; 30 minutes of device time a
# session). Run on the device from the repository root, carrying .whl/ (made here beforehand by
# ../shared/tools/device-wheels.sh), e.g. with the device tool:
#
#   command: bash bench/gpu_session.sh check      carry: [".whl"]
#   command: bash bench/gpu_session.sh profile    carry: [".whl"]
#   (commit $OUT/profile/llama3_8b.csv and .meta.json as apcsim/profiles/h100/, then)
#   command: bash bench/gpu_session.sh validate 0/4   (1/4, 2/4, 3/4: one call each)
#
# Results go under $OUT (the device tool brings that folder back), or ./gpu_results elsewhere,
# each with the command, device and date the scripts record. Copy them into the repo
# (bench/results/, apcsim/profiles/h100/, docs/validation.md) by hand: this script writes
# nothing else. `--dry-run` before the phase prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
phase="${1:-}"
out="${OUT:-$PWD/gpu_results}"
py="${PYTHON:-python3}"

run() {  # echo the command, then run it (not in a dry run); a failure stops the phase
  echo "+ $*" >&2
  if [ "$dry" = 0 ]; then "$@"; fi
}

setup() {
  if [ -d .whl ]; then
    run "$py" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  run mkdir -p "$out"
  if [ "$dry" = 0 ]; then
    { date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      || echo "no nvidia-smi"; git rev-parse --short HEAD 2>/dev/null || true; } > "$out/session_$phase.txt"
  fi
}

case "$phase" in
  check)  # GPU correctness, then issue 4's benchmarks (~5 min)
    setup
    run "$py" -m pytest -q -x tests/test_kernels.py tests/test_decode_graphs.py tests/test_engine.py
    run "$py" bench/engine_kernels.py --out "$out/engine_kernels_h100.json"
    run "$py" bench/engine_step.py --repeats 3 --out "$out/engine_step_h100.json"
    ;;
  profile)  # issue 5: the H100 profile of llama3_8b and its fit (~2-4 min)
    setup
    run "$py" -m engine.profile model=llama3_8b "out=$out/profile/llama3_8b.csv"
    run "$py" -m apcsim.calibration hardware=h100 model=llama3_8b "profile=$out/profile/llama3_8b.csv" \
      "hydra.run.dir=$out/calibration"
    ;;
  validate)  # issue 5: one shard of the H100 matrix against the committed profile
    shard="${2:?validate needs a shard I/N, e.g. 0/4}"
    setup
    run "$py" -m engine.validate_suite suite=h100 "shard=$shard" max_wall_s=480 "out=$out/validation"
    ;;
  *)
    echo "usage: bash bench/gpu_session.sh [--dry-run] check | profile | validate I/N" >&2
    exit 2
    ;;
esac
