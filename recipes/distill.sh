#!/usr/bin/env bash
# Distil the best recipe (five decoders on two fine-tuned encoders, log-probability averaging, test-time flip,
# consensus reranking) into one soft-attention decoder of the shipped kind, on the fine-tuned EfficientNet-Lite2
# features (sequence-level knowledge distillation, Kim & Rush 2016; word level with TOPK_WEIGHT > 0).
# Stages (each one's output in OUT, the folder of recipes/best_recipe.sh, whose five decoders are the teacher):
#   teacher_train.jsonl  the teacher's caption of every training image, with its top-10 next-word
#                        probabilities (recipes/teacher_captions.py; resumable, image by image)
#   NAME                 the student: soft attention from scratch on the Lite2 features, the human captions and
#                        the teacher's (weight WEIGHT), label smoothing 0.1, up to EPOCHS epochs, best val CIDEr-D
#   NAME_scst            + 1 SCST epoch (CIDEr-D reward, lr 1e-5, mean-of-samples baseline), as the shipped model
#   NAME_scst/val.json   scored on val at beam 5 with the shipped decoding (length penalty 1.0, trigram blocking)
# Usage: recipes/distill.sh DATA OUT     (run recipes/best_recipe.sh DATA OUT first: it makes the teacher)
# Environment: PYTHON (default python3), NAME (default student), WEIGHT (default 1.0: train.distill_weight),
#   TOPK_WEIGHT (default 0: train.distill_topk), HIDDEN (default 512: the decoder's hidden units), EPOCHS
#   (default 5), SEED (default 0), EXTRA_MEMBER (a further decoder file joining the teacher's ensemble; default
#   none), TEACHER_FILE (default OUT/teacher_train.jsonl; give another with EXTRA_MEMBER), WITH_SCST (default 1;
#   0 skips NAME_scst).
# Resumable: a stage whose output exists is skipped, an interrupted training resumes from its last checkpoint,
# the teacher's file goes on from its last image (a complete one is checked in seconds).
# The shipped model is NAME=student_topk TOPK_WEIGHT=0.5 (its cross-entropy decoder, not the SCST one), made
# with: python tools/ship_model.py OUT/student_topk --embed-encoder --int8-encoder --int8-decoder --consensus
#   --set decode.length_penalty=1.0 --set decode.block_ngram=3 --set decode.consensus_weight=1.5
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 DATA OUT" >&2; exit 2; fi
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "$1") OUT=$(realpath "$2")
NAME=${NAME:-student}
for needed in lite2.pt smooth_scst/model.pt lite0_pair.pt hard_scst/model.pt encoder.pth; do
  [ -e "$OUT/$needed" ] || { echo "distill.sh: $OUT/$needed: missing; run recipes/best_recipe.sh first (--train-only is enough)" >&2; exit 1; }
done

TEACHER_FILE=$(realpath -m "${TEACHER_FILE:-$OUT/teacher_train.jsonl}")
EXTRA=()
if [ -n "${EXTRA_MEMBER:-}" ]; then
  [ -f "$EXTRA_MEMBER" ] || { echo "distill.sh: $EXTRA_MEMBER: no such model file" >&2; exit 1; }
  [ "$TEACHER_FILE" != "$OUT/teacher_train.jsonl" ] || { echo "distill.sh: EXTRA_MEMBER needs a TEACHER_FILE of its own" >&2; exit 1; }
  EXTRA=(--model "$(realpath "$EXTRA_MEMBER")")
fi
cd "$OUT"
# shellcheck source=recipes/lib.sh
source "$REPO/recipes/lib.sh"  # train NAME ARGS...: resumable `captioner train`; SCST and BEST_DECODE settings

# the teacher: the best recipe's decoding (as its last report in best_recipe.sh)
$PY "$REPO/recipes/teacher_captions.py" --model lite2.pt --model smooth_scst/model.pt --model lite0_pair.pt \
  --model hard_scst/model.pt "${EXTRA[@]}" --data "$DATA" --split train --beam-size 5 --topk 10 --out "$TEACHER_FILE" \
  "${BEST_DECODE[@]}"
ENC=(--set encoder.name=efficientnet_lite2 --set encoder.input_size=260 --set encoder.weights="$OUT/encoder.pth")
train "$NAME" --config soft_lite0 "${ENC[@]}" --set train.seed="${SEED:-0}" --set train.label_smoothing=0.1 \
  --set train.max_epochs="${EPOCHS:-5}" --set train.monitor=cider --set model.hidden_dim="${HIDDEN:-512}" \
  --set train.distill="$TEACHER_FILE" --set train.distill_weight="${WEIGHT:-1.0}" \
  --set train.distill_topk="${TOPK_WEIGHT:-0}"
STAGES=("$NAME")
if [ "${WITH_SCST:-1}" != 0 ]; then
  train "${NAME}_scst" --config "$NAME/config.yaml" --set train.init_from="$NAME/model.pt" "${SCST[@]}"
  STAGES+=("${NAME}_scst")
fi
for stage in "${STAGES[@]}"; do
  [ -f "$stage/val.json" ] || $PY -m captioner.cli evaluate --model "$stage/model.pt" --data "$DATA" --split val \
    --beam-size 5 --set decode.length_penalty=1.0 --set decode.block_ngram=3 --no-progress --out "$stage/val.json"
done
