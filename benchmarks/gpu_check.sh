#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA tests, bf16/fp16 training, throughput with and without
# channels-last/compile, memory peaks and a 2-epoch CIFAR-10 run, as JSON in one folder.
#
#   bash benchmarks/gpu_check.sh OUT_DIR             # on one GPU; stopped after 8 minutes
#   bash benchmarks/gpu_check.sh OUT_DIR --dry_run   # the CPU dry path at tiny sizes
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry_run] [--parts a,b]}"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
cd "$repo"
# the parts write their JSON as they finish: a run stopped at the limit keeps what it measured
timeout --signal=INT --kill-after=30 "${GPU_CHECK_LIMIT_S:-480}" python benchmarks/gpu_check.py "$out" "$@"
