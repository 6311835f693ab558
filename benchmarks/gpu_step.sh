#!/usr/bin/env bash
# Issue 16's GPU figures in one command: one cfg step at 512 (it/s, ours against the official step, same
# weights, interleaved), core path and host path, fp16 and then bf16 (budget: ~8 minutes in all).
#
#   bash benchmarks/gpu_step.sh       # from the repository root, in the environment the tests use
#   PYTHON=/path/to/python JSON_DIR=/some/dir bash benchmarks/gpu_step.sh
#
# Each leg gets at most GPU_STEP_TIMEOUT seconds (default 110) and prints its table when it finishes, so a run
# cut short still shows the legs it measured. With JSON_DIR set, each leg also writes its table there.
# Without a CUDA device it says so and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
LIMIT="${GPU_STEP_TIMEOUT:-110}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_step.sh: torch sees no CUDA device (torch.cuda.is_available() is False): nothing was run." >&2
  echo "             On a CPU, run: $PY benchmarks/step_bench.py --threads 1 --clock cpu --sizes 512" >&2
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

status=0
for dtype in fp16 bf16; do
  for path in core host; do
    echo "=== $dtype, $path path ==="
    json=()
    if [ -n "${JSON_DIR:-}" ]; then mkdir -p "$JSON_DIR" && json=(--json "$JSON_DIR/step_${dtype}_${path}.json"); fi
    timeout --signal=INT --kill-after=20 "$LIMIT" "$PY" benchmarks/step_bench.py --device cuda --dtype "$dtype" \
      --sizes 512 --repeats 10 --path "$path" "${json[@]}"
    rc=$?
    if [ "$rc" -eq 124 ]; then echo "gpu_step.sh: $dtype $path stopped at its ${LIMIT} s budget" >&2; fi
    if [ "$rc" -ne 0 ]; then status=$rc; fi
  done
done
exit "$status"
