#!/usr/bin/env bash
# Issue 6's best recipe, rebuilt on a CPU from what the repository holds: five decoders on two fine-tuned encoders,
# decoded as one ensemble with consensus reranking (docs/RESULTS.md, "The best recipe rebuilt").
#   lite2.pt       the shipped model's decoder (soft attention + 1 SCST epoch on the GPU-fine-tuned
#                  EfficientNet-Lite2), reading the cached features of that encoder, written out as encoder.pth
#   lite0_pair.pt  the model shipped before it (git eb6f456): two soft decoders on a GPU-fine-tuned Lite0
#   smooth         soft attention, label smoothing 0.1, from scratch on the Lite2 features (5 epochs, best CIDEr-D)
#   smooth_scst    + 1 SCST epoch (CIDEr-D reward, lr 1e-5, mean-of-samples baseline)
#   hard           hard attention (REINFORCE, Xu et al. 4.1) from scratch on the same features (5 epochs)
#   hard_scst      + 1 SCST epoch with the test-time network (scst_dropout=false); decoded with the expected context
# then scored on val at beam 5: plain, reranked (length penalty 1.0, consensus weight 0.3), reranked for BLEU-4
# (length penalty 0.7, consensus weight 0.5), and with the members' log-probabilities averaged (length penalty 0.7,
# consensus weight 0.7) and also reading the mirrored images (length penalty 0.8, consensus weight 1.0; length
# penalty 0.7, consensus weight 1.5: the best BLEU-4 and CIDEr-D with SEED=1); reports val_*.json in OUT.
# On the project's 2-core CPU (2026-12-03): features 7 min, smooth 5 x 3.6-6 min, its SCST 4 min, hard 5 x 3.4 min,
# its SCST 4 min, the five evaluations 16 min: about 1 hour 20 minutes (BLEU-4 24.7, 25.1, 25.4, 25.7, 25.6).
# With SEED=1 (2026-12-04, about 1 hour 20 minutes): BLEU-4 24.9, 25.1, 25.2, 25.5, 25.8, 26.1 (docs/RESULTS.md,
# "A second seed of the recipe").
# Usage: scripts/best_recipe.sh DATA OUT      (DATA: Flickr8k, e.g. ../shared/data/flickr8k; OUT: a folder)
# Environment: PYTHON (default python3), SEED (default 0: the seed of the two decoders trained here; the other
#   three are fixed files, so a second SEED measures how much the recipe's numbers move with training noise).
# Resumable: a stage whose model.pt exists is skipped, an interrupted training resumes from its last checkpoint.
set -euo pipefail
DATA=$(realpath "$1") OUT=$2
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT"
DECODE=(--set decode.block_ngram=3 --set model.hard_inference=expected --set decode.consensus_k=30)

if [ ! -f lite2.pt ]; then  # the shipped model's encoder as a weights file, its decoder reading that file's features
  $PY - "$REPO/src/captioner/pretrained/model.pt" <<'EOF'
import dataclasses
import sys
from pathlib import Path

from captioner.checkpoint import load_model, save_model
from captioner.encoders.base import file_sha1
from captioner.io import torch_save_atomic

model = load_model(sys.argv[1])
weights = torch_save_atomic(Path("encoder.pth").resolve(), model.encoder_state)
model.encoder_state, model.encoder["weights"] = None, file_sha1(weights)
model.config = dataclasses.replace(model.config, encoder=dataclasses.replace(model.config.encoder, weights=str(weights)))
save_model("lite2.pt", model)
EOF
fi
if [ ! -f lite0_pair.pt ]; then  # written whole, then renamed: an interrupted copy is never taken for the file
  git -C "$REPO" show eb6f456:src/captioner/pretrained/model.pt > lite0_pair.pt.tmp && mv lite0_pair.pt.tmp lite0_pair.pt
fi

train() {  # name, captioner train arguments
  local name=$1
  shift
  if [ -f "$name/model.pt" ]; then echo "$name: done before"; return; fi
  local resume=()
  if [ -f "$name/checkpoints/last.ckpt" ]; then resume=(--resume); fi
  $PY -m captioner.cli train --data "$DATA" --out "$name" --no-progress "${resume[@]}" "$@"
}
ENC=(--set encoder.name=efficientnet_lite2 --set encoder.input_size=260 --set encoder.weights="$OUT/encoder.pth")
SCST=(--set train.scst=true --set train.lr=1.0e-5 --set train.batch_size=32 --set train.scst_baseline=mean
      --set train.scst_max_len=16 --set train.scst_samples=5 --set train.monitor=cider --set train.max_time=null
      --set train.max_epochs=1)
SEEDED=(--set train.seed="${SEED:-0}")
train smooth --config soft_lite0 "${ENC[@]}" "${SEEDED[@]}" --set train.label_smoothing=0.1 --set train.max_epochs=5 \
  --set train.monitor=cider
train smooth_scst --config smooth/config.yaml --set train.init_from=smooth/model.pt "${SCST[@]}"
train hard --config hard_lite0 "${ENC[@]}" "${SEEDED[@]}" --set train.monitor=cider --set train.max_epochs=5 \
  --set train.early_stop_patience=3
train hard_scst --config hard/config.yaml --set train.init_from=hard/model.pt "${SCST[@]}" --set train.scst_dropout=false

# the first file's encoder (Lite2, features cached) finds the consensus neighbours
MODELS=(--model lite2.pt --model smooth_scst/model.pt --model lite0_pair.pt --model hard_scst/model.pt)
for setting in "1.0 false 0 prob false" "1.0 true 0.3 prob false" "0.7 true 0.5 prob false" \
               "0.7 true 0.7 logprob false" "0.8 true 1.0 logprob true" "0.7 true 1.5 logprob true"; do
  read -r lp consensus weight mean flip <<<"$setting"
  report=val_lp${lp}_consensus-${consensus}_w$weight
  [ "$mean" = prob ] || report+=_$mean
  [ "$flip" = false ] || report+=_flip
  [ -f "$report.json" ] && continue
  $PY -m captioner.cli evaluate "${MODELS[@]}" --data "$DATA" --split val --beam-size 5 --no-progress \
    "${DECODE[@]}" --set decode.length_penalty="$lp" --set decode.consensus="$consensus" \
    --set decode.consensus_weight="$weight" --set decode.ensemble_mean="$mean" --set decode.flip="$flip" \
    --out "$report.json"
done
