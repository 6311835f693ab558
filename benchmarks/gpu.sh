#!/usr/bin/env bash
# The CUDA figures, in fp16 and then bf16 (budget: 10 minutes in all).
#
#   bash benchmarks/gpu.sh            # the benchmark table (run_all.py) with sizes suited to one GPU
#   bash benchmarks/gpu.sh step       # issue 16: one cfg step at 512, ours / official, core and host path
#   bash benchmarks/gpu.sh half       # issue 26, at most 8 minutes: the suite's half-precision tests on CUDA, a cfg
#                                     # step's it/s at 512 and 1024 (fp16, bf16), peak VRAM of an auto-planned
#                                     # 2048 restore against the planner's prediction
#   PYTHON=/path/to/python JSON_DIR=/some/dir bash benchmarks/gpu.sh [step|half]
#
# Each run gets at most GPU_BENCH_TIMEOUT seconds (default 290 per dtype for the table, 110 per leg for the
# step; half: 180 s for the tests, 80 s per step leg, 100 s for the restore, 460 s at most in all) and prints
# its table as it finishes, so a run cut short still shows what it measured. With JSON_DIR set, each run also writes its rows
# there. Without a CUDA device it says so and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
WHAT="${1:-table}"
GRACE=20  # seconds between the interrupt at a run's budget and the kill
case "$WHAT" in
  table) LIMIT="${GPU_BENCH_TIMEOUT:-290}" ;;
  step) LIMIT="${GPU_BENCH_TIMEOUT:-110}" ;;
  half) LIMIT="${GPU_BENCH_TIMEOUT:-80}"; GRACE=5 ;;
  *) echo "gpu.sh: unknown '$WHAT' (table, step or half)" >&2; exit 2 ;;
esac

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu.sh: $PY cannot import torch: nothing was run (activate the environment the tests use, or set PYTHON)." >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device (torch.cuda.is_available() is False): nothing was run." >&2
  if [ "$WHAT" = half ]; then
    echo "        On a CPU the half-precision tests are part of the suite: $PY -m pytest tests/test_half_precision.py" >&2
  else
    echo "        On a CPU, run: $PY benchmarks/run_all.py   (see benchmarks/README.md)" >&2
  fi
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

status=0
run() {  # run NAME ARGS...: one timed run, its table kept in JSON_DIR/NAME.json when JSON_DIR is set
  local name="$1"; shift
  local json=()
  if [ -n "${JSON_DIR:-}" ]; then mkdir -p "$JSON_DIR" && json=(--json "$JSON_DIR/$name.json"); fi
  timed "$name" "$LIMIT" "$PY" "$@" "${json[@]}"
}
timed() {  # timed NAME SECONDS COMMAND...: one run cut at SECONDS
  local name="$1" limit="$2"; shift 2
  echo "=== $name ==="
  timeout --signal=INT --kill-after="$GRACE" "$limit" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ]; then echo "gpu.sh: $name stopped at its ${limit} s budget" >&2; fi
  if [ "$rc" -ne 0 ]; then status=$rc; fi
}
if [ "$WHAT" = half ]; then
  # 1. the half-precision test mode on the GPU (tests/half_precision.py): every workflow in fp16 and bf16
  #    against float32, the fp8 ControlNet beside an fp8 UNet, the full-size one-step test in both modes
  DIFFBIR_TEST_DEVICE=cuda timed tests_half_precision "${GPU_TESTS_TIMEOUT:-180}" "$PY" -m pytest -q \
    tests/test_half_precision.py tests/test_full_size.py "tests/test_nodes_controlnet.py::test_controlnet_fp8_storage_computes_in_the_cast_dtype"
  # 2. it/s of one cfg step (ComfyUI's UNet + our ControlNet, the nodes' path) at 512 and 1024
  for dtype in fp16 bf16; do
    run "step_${dtype}" benchmarks/step_bench.py --device cuda --dtype "$dtype" --sizes 512,1024 --repeats 5 \
      --path host
  done
  # 3. an auto-planned 2048 restore (and the 512 baseline): peak VRAM of each stage against the planner
  LIMIT="${GPU_RESTORE_TIMEOUT:-100}" run restore_2048_fp16 benchmarks/any_size_bench.py --device cuda --dtype fp16 \
    --sizes 2048
  exit "$status"
fi
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
