#!/usr/bin/env bash
# The benchmark table on CUDA, in fp16 and then bf16, with sizes suited to one GPU (budget: 10 minutes in all).
#
#   bash benchmarks/gpu.sh            # from the repository root, in the environment the tests use
#   PYTHON=/path/to/python bash benchmarks/gpu.sh
#
# Each dtype gets at most GPU_BENCH_TIMEOUT seconds (default 290); every script prints its own table as it
# finishes, so a run cut short still shows what it measured. Without a CUDA device it says so and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
LIMIT="${GPU_BENCH_TIMEOUT:-290}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device (torch.cuda.is_available() is False): nothing was run." >&2
  echo "        On a CPU, run: $PY benchmarks/run_all.py   (see benchmarks/README.md)" >&2
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

status=0
for dtype in fp16 bf16; do
  echo "=== $dtype ==="
  timeout --signal=INT --kill-after=20 "$LIMIT" "$PY" benchmarks/run_all.py --device cuda --dtype "$dtype" \
    --repeats 10 --stage1-sizes 1024,2048 --stage2-sizes 256,512,1024 --vae-sizes 1024 --vae-tiled \
    --restore-out 2048 --restore-steps 4
  rc=$?
  if [ "$rc" -eq 124 ]; then echo "gpu.sh: $dtype run stopped at its ${LIMIT} s budget" >&2; fi
  if [ "$rc" -ne 0 ]; then status=$rc; fi
done
exit "$status"
