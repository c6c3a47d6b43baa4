#!/usr/bin/env bash
# The best recipe, rebuilt on a CPU from files the repository holds: five decoders on two fine-tuned encoders,
# decoded as one ensemble with consensus reranking, scored on Flickr8k val at beam 5.
# Stages (each one's output in OUT):
#   lite2.pt       fixed file recipes/files/lite2_scst.pt: one soft decoder (+ 1 SCST epoch) on a GPU-fine-tuned
#                  EfficientNet-Lite2, its encoder written out as encoder.pth so the decoder reads cached features
#   lite0_pair.pt  fixed file recipes/files/lite0_pair.pt: two soft decoders on a GPU-fine-tuned EfficientNet-Lite0
#   smooth         soft attention, label smoothing 0.1, from scratch on the Lite2 features (5 epochs, best CIDEr-D)
#   smooth_scst    + 1 SCST epoch (CIDEr-D reward, lr 1e-5, mean-of-samples baseline)
#   hard           hard attention (REINFORCE, Xu et al. 4.1) from scratch on the same features (5 epochs)
#   hard_scst      + 1 SCST epoch with the test-time network (scst_dropout=false); decoded with the expected context
#   val_*.json     the ensemble scored six ways: plain; reranked (length penalty 1.0, consensus weight 0.3);
#                  reranked for BLEU-4 (0.7, 0.5); the members' log-probabilities averaged (0.7, 0.7); and also
#                  reading the mirrored images (0.8, 1.0; 0.7, 1.5)
# The fixed files are checked against recipes/files/SHA256SUMS before anything runs.
# On a 2-core CPU: features 7 min, smooth 5 x 3.6-6 min, its SCST 4 min, hard 5 x 3.4 min, its SCST 4 min, the
# first five evaluations 16 min: about 1 hour 20 minutes. Measured val BLEU-4, setting by setting: 24.7, 25.1,
# 25.4, 25.7, 25.6 (SEED=0, the first five); 24.9, 25.1, 25.2, 25.5, 25.8, 26.1 (SEED=1).
# Usage: recipes/best_recipe.sh [--dry-run | --train-only] DATA OUT   (DATA: Flickr8k, e.g. ../shared/data/flickr8k;
#   OUT: a folder)
#   --dry-run: check DATA and the fixed files, list the stages (and which are done in OUT), run nothing.
#   --train-only: make the five decoders, score nothing (all that recipes/distill.sh needs).
# Environment: PYTHON (default python3), SEED (default 0: the seed of the two decoders trained here; the other
#   three are fixed files, so a second SEED measures how much the recipe's numbers move with training noise),
#   RECIPE_FILES (default recipes/files: where the fixed files are; their hashes always come from the manifest).
# Resumable: a stage whose output exists is skipped, an interrupted training resumes from its last checkpoint.
set -euo pipefail
DRY=0 TRAIN_ONLY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; elif [ "${1:-}" = --train-only ]; then TRAIN_ONLY=1; shift; fi
if [ $# -ne 2 ]; then echo "usage: $0 [--dry-run | --train-only] DATA OUT" >&2; exit 2; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
MANIFEST=$REPO/recipes/files/SHA256SUMS
FILES=${RECIPE_FILES:-$REPO/recipes/files}
PY=${PYTHON:-python3}
# any layout captioner reads (Flickr8k as distributed, captions.txt + images/ + splits/, Karpathy's JSON, ...)
$PY - "$1" <<'EOF' || exit 1
import sys
from pathlib import Path

from captioner.data.readers import detect_format
from captioner.errors import CaptionerError

try:
    detect_format(Path(sys.argv[1]))
except CaptionerError as e:
    sys.exit(f"best_recipe.sh: {e}")
EOF
DATA=$(realpath "$1") OUT=$2

fixed() {  # a fixed file's path, once its SHA-256 is the manifest's (otherwise a one-line error and exit)
  local want got
  want=$(awk -v f="$1" '$2 == f || $2 == "*" f {print $1}' "$MANIFEST")
  if [ -z "$want" ]; then echo "best_recipe.sh: $1: not listed in $MANIFEST" >&2; exit 1; fi
  if [ ! -f "$FILES/$1" ]; then echo "best_recipe.sh: $FILES/$1: missing" >&2; exit 1; fi
  got=$(sha256sum "$FILES/$1" | cut -d ' ' -f 1)
  if [ "$got" != "$want" ]; then
    echo "best_recipe.sh: $FILES/$1: SHA-256 $got, not the manifest's $want" >&2
    exit 1
  fi
  echo "$FILES/$1"
}
LITE2=$(fixed lite2_scst.pt)
LITE0_PAIR=$(fixed lite0_pair.pt)
SETTINGS=("1.0 false 0 prob false" "1.0 true 0.3 prob false" "0.7 true 0.5 prob false"
          "0.7 true 0.7 logprob false" "0.8 true 1.0 logprob true" "0.7 true 1.5 logprob true")
report_name() {  # length penalty, consensus, weight, mean, flip
  local name=val_lp$1_consensus-$2_w$3
  [ "$4" = prob ] || name+=_$4
  [ "$5" = false ] || name+=_flip
  echo "$name"
}

if [ "$DRY" = 1 ]; then
  echo "data: $DATA; fixed files: $FILES (SHA-256 as in the manifest)"
  stage() {  # name, its output
    if [ -e "$OUT/$2" ]; then echo "  $1: done ($OUT/$2)"
    elif [ -f "$OUT/$1/checkpoints/last.ckpt" ]; then echo "  $1: to resume from its last checkpoint"
    else echo "  $1: to run"; fi
  }
  echo "stages in $OUT:"
  stage lite2.pt lite2.pt
  stage lite0_pair.pt lite0_pair.pt
  for name in smooth smooth_scst hard hard_scst; do stage "$name" "$name/model.pt"; done
  for setting in "${SETTINGS[@]}"; do
    name=$(report_name $setting)
    stage "$name" "$name.json"
  done
  echo "dry run: nothing was run"
  exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT"
DECODE=(--set decode.block_ngram=3 --set model.hard_inference=expected --set decode.consensus_k=30)

if [ ! -f lite2.pt ]; then  # the fixed file's encoder as a weights file, its decoder reading that file's features
  $PY - "$LITE2" <<'PYEOF'
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
PYEOF
fi
if [ ! -f lite0_pair.pt ]; then  # written whole, then renamed: an interrupted copy is never taken for the file
  cp "$LITE0_PAIR" lite0_pair.pt.tmp && mv lite0_pair.pt.tmp lite0_pair.pt
fi

# shellcheck source=recipes/lib.sh
source "$REPO/recipes/lib.sh"  # train NAME ARGS...: resumable `captioner train`; SCST settings
ENC=(--set encoder.name=efficientnet_lite2 --set encoder.input_size=260 --set encoder.weights="$OUT/encoder.pth")
SEEDED=(--set train.seed="${SEED:-0}")
train smooth --config soft_lite0 "${ENC[@]}" "${SEEDED[@]}" --set train.label_smoothing=0.1 --set train.max_epochs=5 \
  --set train.monitor=cider
train smooth_scst --config smooth/config.yaml --set train.init_from=smooth/model.pt "${SCST[@]}"
train hard --config hard_lite0 "${ENC[@]}" "${SEEDED[@]}" --set train.monitor=cider --set train.max_epochs=5 \
  --set train.early_stop_patience=3
train hard_scst --config hard/config.yaml --set train.init_from=hard/model.pt "${SCST[@]}" --set train.scst_dropout=false
[ "$TRAIN_ONLY" = 0 ] || exit 0

# the first file's encoder (Lite2, features cached) finds the consensus neighbours
MODELS=(--model lite2.pt --model smooth_scst/model.pt --model lite0_pair.pt --model hard_scst/model.pt)
for setting in "${SETTINGS[@]}"; do
  read -r lp consensus weight mean flip <<<"$setting"
  report=$(report_name "$lp" "$consensus" "$weight" "$mean" "$flip")
  [ -f "$report.json" ] && continue
  $PY -m captioner.cli evaluate "${MODELS[@]}" --data "$DATA" --split val --beam-size 5 --no-progress \
    "${DECODE[@]}" --set decode.length_penalty="$lp" --set decode.consensus="$consensus" \
    --set decode.consensus_weight="$weight" --set decode.ensemble_mean="$mean" --set decode.flip="$flip" \
    --out "$report.json"
done
