#!/usr/bin/env bash
# Checks on a CUDA machine (CI has no GPU, so this is run by hand):
#   1. tests/test_cuda.py: decoding, feature extraction, captioning and training on the GPU vs the CPU;
#   2. the whole test suite with the GPU visible (its trainings then run on the GPU in mixed precision);
#   3. the shipped model captions the sample photos on the GPU as it does on the CPU.
# Usage: bash tools/gpu_check.sh [LOG_DIR]   (python: $PYTHON, default python3; pytest-xdist is used if present)
set -u
PYTHON=${PYTHON:-python3}
LOG=${1:-gpu_check_logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG/gpu.txt"
$PYTHON -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'lightning', lightning.__version__, 'gpu', torch.cuda.is_available())" \
  | tee "$LOG/versions.txt"

echo "== 1. CUDA tests"
timeout "${CUDA_TESTS_S:-150}" $PYTHON -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 \
  | tee "$LOG/cuda_tests.log" || status=1

echo "== 2. whole suite, GPU visible"
workers=$($PYTHON -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-8}")
timeout "${SUITE_S:-300}" $PYTHON -m pytest -q -p no:cacheprovider $workers --durations=10 2>&1 \
  | tee "$LOG/suite.log" || status=1

echo "== 3. shipped model, sample photos: GPU vs CPU captions"
for d in cpu cuda; do
  timeout 120 $PYTHON -m captioner.cli caption src/captioner/samples/*.jpg --device $d > "$LOG/captions_$d.txt" \
    2> "$LOG/captions_$d.err" || status=1
done
if diff "$LOG/captions_cpu.txt" "$LOG/captions_cuda.txt" > "$LOG/captions.diff"; then
  echo "same captions on cpu and cuda ($(wc -l < "$LOG/captions_cpu.txt") photos)"
else
  echo "captions differ (TF32 convolutions on the GPU can flip a close word choice):"; cat "$LOG/captions.diff"
fi
exit $status
