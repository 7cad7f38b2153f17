#!/usr/bin/env bash
# GPU readiness check (issue #28): the CUDA tests, training steps/s at batch 128 and the
# default map mode's px/s on an 8192 x 8192 SAR scene, on one CUDA GPU, in under 8 minutes.
# Figures merge into benchmarks/results.json (keys gpu_training, gpu). Run from anywhere:
#     bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the env
# Written without a GPU at hand: it has not run yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import sys, torch; sys.exit(None if torch.cuda.is_available() else
    'gpu_check.sh: torch sees no CUDA GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$SECONDS

echo "== 1/3 CUDA tests: bf16 training run, pixel-mode map on cuda (cap 4 min)"
timeout 240 "$PY" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -rs

echo "== 2/3 training steps/s, ResNet-18 DisCoM-KD and mono, batch 128 (cap 2 min)"
(cd benchmarks && timeout 120 "$PY" bench_training.py --steps 20 --warmup 5 \
    --batch-size 128 --key gpu_training)

echo "== 3/3 default map mode on an 8192 x 8192 px SAR scene (cap 2 min)"
(cd benchmarks && timeout 120 "$PY" bench_gpu_map.py --size 8192 --device cuda)

echo "gpu_check.sh: done in $((SECONDS - start)) s; figures in benchmarks/results.json"
