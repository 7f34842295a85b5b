#!/usr/bin/env bash
# Every GPU measurement the project still needs, in ONE device call (bench/gpu_session.py has the
# phases, the time budget and the files it writes). Make the wheels first, here:
#   bash bench/device_wheels.sh
# then with the device tool, from the repository root:
#   command: bash bench/gpu_session.sh        carry: [".whl"]        timeout_s: 600
# Results: at most 8 files at the top of $OUT, the summary table printed last. Options (see
# `python3 bench/gpu_session.py --help`): --budget S (default 510), --phases a,b, --runs NAME,...
# `bash bench/gpu_session.sh --dry-run --out DIR` runs the same schedule with stand-in commands
# on any machine (tests/engine/test_gpu_session.py).
set -uo pipefail  # no -e: a failing phase must not stop the later ones
cd "$(dirname "$0")/.."
export GPU_SESSION_T0="${GPU_SESSION_T0:-$(date +%s.%N)}"  # the wheels' install counts against the budget
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ "$dry" = 0 ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "gpu_session: installing the carried wheels failed; going on without them" >&2
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif [ "$dry" = 0 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "${PYTHON:-python3}" bench/gpu_session.py "$@"
