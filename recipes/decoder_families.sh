#!/usr/bin/env bash
# The decoder families side by side: soft attention (Xu et al. 2015), spatial and adaptive attention (Lu et al.
# 2017) and a transformer, on the same features, each trained with cross-entropy, then one SCST epoch.
# Stages (each one's output in OUT), for each FEATURES and TYPE:
#   FEATURES_TYPE            cross-entropy from scratch (config TYPE_lite0), up to EPOCHS epochs, the best on
#                            decoded val CIDEr-D
#   FEATURES_TYPE_scst       + 1 SCST epoch (CIDEr-D reward, lr 1e-5, mean-of-samples baseline)
#   FEATURES_TYPE*/val.json  scored on val at beam 5, length penalty 1.0, trigram blocking
#   table.md                 every run's scores, its BLEU-4 / CIDEr-D against the soft decoder of the same
#                            features and stage (paired bootstrap), and its seconds per training epoch (median)
# With RECIPE (the OUT of recipes/best_recipe.sh, its five decoders trained), each family's SCST decoder of the
# last FEATURES (lite2 with LITE2_ENCODER: the recipe's own encoder) as a sixth member, and in the teacher:
#   ensemble5.json           the best recipe's ensemble and decoding (length penalty 0.7, consensus 1.5, mean
#                            log-probability, flip; its val report in RECIPE when there is one)
#   ensemble6_TYPE.json      the same with the family's decoder added
#   student_TYPE             recipes/distill.sh's shipped student (word level 0.5, STUDENT_EPOCHS epochs, default
#                            5 as shipped, no SCST) taught by that six-decoder teacher (teacher_TYPE.jsonl), for
#                            each of TEACHERS (default TYPES, "" none); its val.json decoded as the shipped model
#                            without reranking
#   table.md                 + the six-decoder rows against ensemble5 and against the first TYPE's (soft: a
#                            second decoder of the recipe's kind), the students against RECIPE/student_topk (the
#                            shipped student, when trained there)
# FEATURES: lite0 (the frozen ImageNet EfficientNet-Lite0 of the results table) and, with LITE2_ENCODER, lite2
# (the shipped model's fine-tuned EfficientNet-Lite2 frozen as a weights file: encoder.pth of
# recipes/best_recipe.sh's OUT).
# Usage: recipes/decoder_families.sh DATA OUT
# Environment: PYTHON (default python3), TYPES (default "soft spatial adaptive transformer"), LITE2_ENCODER (a
#   weights file; default none: lite0 only), EPOCHS (the families'; default 20, early stopping after four epochs
#   without a better val CIDEr-D), STUDENT_EPOCHS (default 5), SEED (default 0), CONFIG (default %s_lite0:
#   the config of each TYPE, a printf pattern; synth_%s runs the recipe on `captioner synth` data in a minute),
#   EVAL_ARGS (more `captioner evaluate` options, e.g. "--no-meteor --tokenizer python" where there is no Java),
#   RECIPE and TEACHERS (above).
# Resumable: a stage whose output exists is skipped, an interrupted training resumes from its last checkpoint.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 DATA OUT" >&2; exit 2; fi
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "$1")
mkdir -p "$2"
OUT=$(realpath "$2")
TYPES=(${TYPES:-soft spatial adaptive transformer})
FEATURES=(lite0)
if [ -n "${LITE2_ENCODER:-}" ]; then
  [ -f "$LITE2_ENCODER" ] || { echo "decoder_families.sh: $LITE2_ENCODER: no such weights file" >&2; exit 1; }
  LITE2_ENCODER=$(realpath "$LITE2_ENCODER")
  FEATURES+=(lite2)
fi
cd "$OUT"

# shellcheck source=recipes/lib.sh
source "$REPO/recipes/lib.sh"  # train NAME ARGS...: resumable `captioner train`; SCST and BEST_DECODE settings
encoder_settings() {  # the features' encoder, as --set arguments
  if [ "$1" = lite2 ]; then
    echo --set encoder.name=efficientnet_lite2 --set encoder.input_size=260 --set encoder.weights="$LITE2_ENCODER"
  fi
}
for features in "${FEATURES[@]}"; do
  for type in "${TYPES[@]}"; do
    name=${features}_$type
    # shellcheck disable=SC2059
    config=$(printf "${CONFIG:-%s_lite0}" "$type")
    # shellcheck disable=SC2046
    train "$name" --config "$config" $(encoder_settings "$features") --set train.seed="${SEED:-0}" \
      --set train.max_epochs="${EPOCHS:-20}" --set train.monitor=cider
    train "${name}_scst" --config "$name/config.yaml" --set train.init_from="$name/model.pt" "${SCST[@]}"
    for stage in "$name" "${name}_scst"; do
      [ -f "$stage/val.json" ] || $PY -m captioner.cli evaluate --model "$stage/model.pt" --data "$DATA" \
        --split val --beam-size 5 --set decode.length_penalty=1.0 --set decode.block_ngram=3 --no-progress \
        --out "$stage/val.json" ${EVAL_ARGS:-}
    done
  done
done

# each family as the best recipe's sixth decoder, and in its teacher
ROWS6=() ROWS_STUDENT=()
if [ -n "${RECIPE:-}" ]; then
  RECIPE=$(realpath "$RECIPE")
  last=${FEATURES[-1]}
  MEMBERS=(--model "$RECIPE/lite2.pt" --model "$RECIPE/smooth_scst/model.pt" --model "$RECIPE/lite0_pair.pt"
           --model "$RECIPE/hard_scst/model.pt")
  ensemble() {  # ensemble REPORT [--model FILE]: the recipe's members (and FILE) on val, as the recipe decodes
    local report=$1
    shift
    # shellcheck disable=SC2086
    [ -f "$report" ] || $PY -m captioner.cli evaluate "${MEMBERS[@]}" "$@" --data "$DATA" --split val \
      --beam-size 5 --no-progress "${BEST_DECODE[@]}" --out "$report" ${EVAL_ARGS:-}
  }
  recipe_report=$RECIPE/val_lp0.7_consensus-true_w1.5_logprob_flip.json  # best_recipe.sh's report of BEST_DECODE
  if [ ! -f ensemble5.json ] && [ -f "$recipe_report" ]; then cp "$recipe_report" ensemble5.json.tmp && mv ensemble5.json.tmp ensemble5.json; fi
  ensemble ensemble5.json
  ROWS6=("best recipe (5 decoders)=ensemble5.json")
  for type in "${TYPES[@]}"; do
    ensemble "ensemble6_$type.json" --model "${last}_${type}_scst/model.pt"
    ROWS6+=("+ $last $type=ensemble6_$type.json")
  done
  [ -f "$RECIPE/student_topk/val.json" ] && ROWS_STUDENT=("student of the best recipe=$RECIPE/student_topk/val.json")
  for type in ${TEACHERS-${TYPES[@]}}; do
    # the shipped student's settings, whatever EPOCHS this script was given for the families
    EXTRA_MEMBER=$OUT/${last}_${type}_scst/model.pt TEACHER_FILE=$OUT/teacher_$type.jsonl NAME=$OUT/student_$type \
      TOPK_WEIGHT=0.5 WEIGHT=1.0 HIDDEN=512 EPOCHS=${STUDENT_EPOCHS:-5} WITH_SCST=0 \
      "$REPO/recipes/distill.sh" "$DATA" "$RECIPE"
    ROWS_STUDENT+=("student, teacher + $last $type=student_$type/val.json")
  done
fi

# the table: each run against the soft decoder of its features and stage, with its training time per epoch
{
  for features in "${FEATURES[@]}"; do
    for stage in "" _scst; do
      rows=()
      for type in "${TYPES[@]}"; do rows+=("$features $type${stage:+ + SCST}=${features}_$type$stage/val.json"); done
      echo
      $PY "$REPO/tools/report_table.py" "${rows[@]}"
    done
  done
  if [ ${#ROWS6[@]} -gt 0 ]; then
    echo
    $PY "$REPO/tools/report_table.py" "${ROWS6[@]}"
    echo
    # against a second soft decoder: does a family add more than another decoder of the recipe's kind?
    if [ ${#ROWS6[@]} -gt 2 ]; then $PY "$REPO/tools/report_table.py" "${ROWS6[@]:1}"; fi
  fi
  if [ ${#ROWS_STUDENT[@]} -gt 1 ]; then echo; $PY "$REPO/tools/report_table.py" "${ROWS_STUDENT[@]}"; fi
  echo
  echo "| run | seconds per training epoch (median, with the val decoding) |"
  echo "|---|---|"
  for run in */logs/metrics.csv; do
    $PY - "$run" <<'EOF'
import csv
import sys

times = sorted(float(r["time/epoch_s"]) for r in csv.DictReader(open(sys.argv[1])) if r.get("time/epoch_s"))
if times:  # the median: an epoch that waited for the feature cache or a paused machine does not count
    epochs = f"{len(times)} epoch" + ("s" if len(times) > 1 else "")
    print(f"| {sys.argv[1].split('/')[0]} | {times[len(times) // 2]:.0f} ({epochs}) |")
EOF
  done
} > table.md.tmp && mv table.md.tmp table.md
echo "written: $OUT/table.md"
