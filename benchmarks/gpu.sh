#!/usr/bin/env bash
# The CUDA figures, in fp16 and then bf16 (budget: 10 minutes in all).
#
#   bash benchmarks/gpu.sh            # the benchmark table (run_all.py) with sizes suited to one GPU
#   bash benchmarks/gpu.sh step       # issue 16: one cfg step at 512, ours / official, core and host path
#   PYTHON=/path/to/python JSON_DIR=/some/dir bash benchmarks/gpu.sh [step]
#
# Each run gets at most GPU_BENCH_TIMEOUT seconds (default 290 per dtype for the table, 110 per leg for the
# step) and prints its table as it finishes, so a run cut short still shows what it measured. With JSON_DIR
# set, each run also writes its rows there. Without a CUDA device it says so and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
WHAT="${1:-table}"
case "$WHAT" in
  table) LIMIT="${GPU_BENCH_TIMEOUT:-290}" ;;
  step) LIMIT="${GPU_BENCH_TIMEOUT:-110}" ;;
  *) echo "gpu.sh: unknown '$WHAT' (table or step)" >&2; exit 2 ;;
esac

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device (torch.cuda.is_available() is False): nothing was run." >&2
  echo "        On a CPU, run: $PY benchmarks/run_all.py   (see benchmarks/README.md)" >&2
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

status=0
run() {  # run NAME ARGS...: one timed run, its table kept in JSON_DIR/NAME.json when JSON_DIR is set
  local name="$1"; shift
  local json=()
  if [ -n "${JSON_DIR:-}" ]; then mkdir -p "$JSON_DIR" && json=(--json "$JSON_DIR/$name.json"); fi
  echo "=== $name ==="
  timeout --signal=INT --kill-after=20 "$LIMIT" "$PY" "$@" "${json[@]}"
  local rc=$?
  if [ "$rc" -eq 124 ]; then echo "gpu.sh: $name stopped at its ${LIMIT} s budget" >&2; fi
  if [ "$rc" -ne 0 ]; then status=$rc; fi
}
for dtype in fp16 bf16; do
  if [ "$WHAT" = table ]; then
    run "table_$dtype" benchmarks/run_all.py --device cuda --dtype "$dtype" --repeats 10 --stage1-sizes 1024,2048 \
      --stage2-sizes 256,512,1024 --vae-sizes 1024 --vae-tiled --restore-out 2048 --restore-steps 4
  else
    for path in core host; do
      run "step_${dtype}_$path" benchmarks/step_bench.py --device cuda --dtype "$dtype" --sizes 512 --repeats 10 \
        --path "$path"
    done
  fi
done
exit "$status"
