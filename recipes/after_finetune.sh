#!/usr/bin/env bash
# From a model whose encoder was fine-tuned (on a GPU: recipes/finetune_gpu.sh) to the shipped kind of model,
# on any machine, a CPU included: the fine-tuned encoder is frozen again as a local weights file, its features
# are cached once, and two decoders train on them, then decode as one ensemble file.
#   decoder   only with DECODER_EPOCHS > 0: the fine-tuned model's decoder, trained on with cross-entropy on
#             the frozen encoder's features (train.init_from; up to DECODER_EPOCHS epochs)
#   scst      1 epoch of self-critical training (CIDEr-D reward) from the fine-tuned model's decoder (or, with
#             DECODER_EPOCHS > 0, from decoder's best epoch)
#   smooth    a second decoder from scratch on the same features, label smoothing 0.1 (up to 10 epochs, the
#             best on decoded val CIDEr-D: as a pair's second member it beat the best on BLEU-4)
#   ensemble.pt  scst + smooth in one file (float16, weight matrices in int8, the encoder's weights inside),
#             decoding defaults length penalty 1.0 + trigram blocking, then scored on val at beam 5
# On a 2-core CPU (Flickr8k): features 4.5 min (EfficientNet-Lite2: 50 min), decoder 4-6 epochs x 3.6 min, scst
# 4-6 min, smooth 10 epochs x 3.7-5.2 min: about 1.5 hours (1.2 without the decoder stage). SCST straight from
# the fine-tuned model's decoder scored higher than after cross-entropy epochs here (val CIDEr-D 54.6 against
# 52.0), hence no decoder stage by default. The shipped model is the scst stage alone, on Lite2 (as a pair with
# smooth it is 26.6 MB: over the 25 MB limit).
# Usage: recipes/after_finetune.sh FINETUNED_MODEL DATA OUT [SECTION.KEY=VALUE ...]   (each setting goes to
#        every training as --set, e.g. train.max_epochs=2 for a quick look)
# Environment: PYTHON (default python3), CONFIG (default soft_lite0), SCST_CONFIG (default scst_soft_lite0),
#   DECODER_EPOCHS (default 0: no decoder stage; 8: the recipe of an earlier shipped ensemble),
#   EVAL_ARGS (more `captioner evaluate` options, e.g. "--no-meteor --tokenizer python" where there is no Java).
# Resumable: a stage whose model.pt exists is skipped.
set -euo pipefail
START=$1 DATA=$2 OUT=$3
shift 3
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-soft_lite0} SCST_CONFIG=${SCST_CONFIG:-scst_soft_lite0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WEIGHTS=$OUT/encoder.pth
extra=()
for s in "$@"; do extra+=(--set "$s"); done

if [ ! -f "$WEIGHTS" ]; then  # the fine-tuned encoder's weights, as a local weights file
  $PY - "$START" "$WEIGHTS" <<'EOF'
import sys
from captioner.checkpoint import load_model
from captioner.io import torch_save_atomic

model = load_model(sys.argv[1])
if model.encoder_state is None:
    sys.exit(f"error: {sys.argv[1]}: carries no fine-tuned encoder (train with encoder.finetune=true)")
torch_save_atomic(sys.argv[2], model.encoder_state)
print(f"encoder weights written to {sys.argv[2]}")
EOF
fi

train() {  # name, config, --set arguments
  local name=$1 config=$2
  shift 2
  if [ -f "$OUT/$name/model.pt" ]; then echo "$name: done before"; return; fi
  local resume=()
  if [ -f "$OUT/$name/checkpoints/last.ckpt" ]; then resume=(--resume); fi
  $PY -m captioner.cli train --config "$config" --data "$DATA" --out "$OUT/$name" --no-progress "${resume[@]}" \
    --set encoder.weights="$WEIGHTS" "$@" "${extra[@]}"
}

SCST_START=$START
if [ "${DECODER_EPOCHS:-0}" -gt 0 ]; then
  train decoder "$CONFIG" --set train.init_from="$START" --set train.max_epochs="$DECODER_EPOCHS" \
    --set train.early_stop_patience=3
  SCST_START=$OUT/decoder/model.pt
fi
train scst "$SCST_CONFIG" --set train.scst=true --set train.init_from="$SCST_START" --set train.max_epochs=1
train smooth "$CONFIG" --set train.label_smoothing=0.1 --set train.max_epochs=10 --set train.monitor=cider
$PY -m captioner.cli export "$OUT/scst/model.pt" "$OUT/smooth/model.pt" "$OUT/ensemble.pt" --half --embed-encoder \
  --int8-encoder --int8-decoder --set decode.length_penalty=1.0 --set decode.block_ngram=3
$PY -m captioner.cli evaluate --model "$OUT/ensemble.pt" --data "$DATA" --split val --beam-size 5 --no-progress \
  --out "$OUT/ensemble_val_beam5.json" ${EVAL_ARGS:-}
