#!/usr/bin/env bash
# The whole GPU benchmark on one GPU, in under 8 minutes; writes
#   benchmarks/results/encode_cuda.{json,md,png}       (encoding throughput, limits, query latency: issue 5)
#   benchmarks/results/distributed_cuda.{json,md}      (torchrun 1 vs 2 processes sharing the GPU, via
#                                                      run_gpu_distributed.sh: issue 7)
# Without a GPU it runs the same code-path selection on the CPU at smoke sizes
# (benchmarks/results/encode_cpu_smoke.*), which checks the script, not the speed.
#   benchmarks/run_gpu_bench.sh            (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
  rc=0
  timeout 320 "$PY" benchmarks/bench_encode.py --preset gpu --device cuda "$@" || rc=$?
  PYTHON="$PY" bash benchmarks/run_gpu_distributed.sh || rc=$?   # at most 170 s
  exit $rc
else
  echo "no CUDA device: running the GPU benchmark's code paths on the CPU at smoke sizes" >&2
  "$PY" benchmarks/bench_encode.py --preset smoke --device cpu "$@"
fi
