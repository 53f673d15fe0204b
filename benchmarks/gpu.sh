#!/usr/bin/env bash
# The suite on a CUDA machine in under 5 minutes: the quick trajectories of W1-W4 with the
# torch peers that run on a GPU (the scipy/ARPACK peers cross to the CPU every product and
# neural-tangents needs its own CUDA JAX, so both are left out), then the largest n that fits
# (n up to 50,000, the engine's cap, for the W1, W2 and W5 MLPs).
# Writes benchmarks/results/gpu.json and benchmarks/results/gpu-max-n.json.
# UNTESTED: the machines this suite was written on have no GPU (see docs/performance.md).
# Usage: bash benchmarks/gpu.sh [python]   (a python whose torch is a CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p benchmarks/results
# W5 (n = 50,000) is left to max_n.py's W5 case: its mnist1d pool takes a minute to generate on
# the CPU; max_n uses synthetic data of the same shape.
timeout 200 "$py" benchmarks/run.py --quick --device cuda --workloads W1,W2-traced,W2-full,W3,W4 \
  --peers jacrev,ntk_vps,pyhessian_top1,pyhessian_top5,eigenthings,ours_prev_only \
  --json benchmarks/results/gpu.json
timeout 90 "$py" benchmarks/max_n.py --device cuda --budget-s 10 --json benchmarks/results/gpu-max-n.json
