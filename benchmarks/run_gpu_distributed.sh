#!/usr/bin/env bash
# Multi-process indexing on one GPU, in under a minute on one H200: `torch.distributed.run --nproc-per-node 2`
# with both ranks on cuda:0 (the index job coordinates over gloo, which lets two ranks share a GPU; NCCL
# would not), then 1 process, on 512 generated JPEGs (nvJPEG decoding) with the default model; checks that
# both give the same ids and embeddings (exit 1 otherwise) and writes
# benchmarks/results/distributed_cuda.{json,md} with images/s for 1 vs 2 processes. Without a GPU it runs
# the same code-path selection on the CPU at a smaller size (benchmarks/results/distributed_cpu_smoke.*),
# which checks the script, not the speed. Extra arguments go to bench_distributed.py (e.g. --results DIR/name).
#   PYTHONPATH=<faiss and weight packages> benchmarks/run_gpu_distributed.sh   (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -c "import torch, faiss, mmsearch" || { echo "error: $PY cannot import torch, faiss and mmsearch" >&2; exit 1; }
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total --format=csv || true
  timeout 170 "$PY" benchmarks/bench_distributed.py --device cuda --jpegs --images 512 --threads 4 --workers 0 \
    --batch-size 128 --shard-size 128 --results benchmarks/results/distributed_cuda "$@"
else
  echo "no CUDA device: running the GPU check's code paths on the CPU at a smaller size" >&2
  "$PY" benchmarks/bench_distributed.py --device cpu --jpegs --images 48 --threads 1 --workers 0 \
    --batch-size 128 --shard-size 12 --results benchmarks/results/distributed_cpu_smoke "$@"
fi
