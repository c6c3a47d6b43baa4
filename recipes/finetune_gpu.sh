#!/usr/bin/env bash
# Encoder fine-tuning against a frozen-encoder control, three runs side by side on one GPU, each stopped by
# the clock (train.max_time), then scored on val at beam 5 (python tokeniser, no METEOR: no Java needed).
#   frozen   the encoder frozen (control: same images, same clock, features computed in the loop too)
#   full     every encoder block trained, encoder LR 1e-4 (config soft_lite0_finetune)
#   full_ls  as full, with label smoothing 0.1
#   cont     as full, meant to go on from an earlier fine-tuned model: pass its encoder as encoder.weights=FILE
#            and its decoder as train.init_from=MODEL (cross-entropy, the same learning rates)
#   cont_low as cont at half the learning rates (decoder 2e-4, encoder 5e-5)
#   lite2    as full, on EfficientNet-Lite2 at its native 260 px (its 9x9 grid pooled to the config's 7x7);
#            where its weights package is not installed, pass a local copy as encoder.weights=FILE
# Usage: recipes/finetune_gpu.sh DATA OUT MAX_TIME [SECTION.KEY=VALUE ...]   (MAX_TIME: DD:HH:MM:SS; each
#        extra setting goes to every run as --set, e.g. train.deterministic=false)
# Environment: PYTHON (default python3), RUNS (default "frozen full full_ls"), EVALUATE (default 1; 0: no
#   val scoring here, each run's decoded-val scores after every epoch are in OUT/NAME/logs/metrics.csv).
# Each run's model is exported to float16 (OUT/NAME/model_fp16.pt) before it is scored.
set -euo pipefail
DATA=$1 OUT=$2 MAX_TIME=$3
shift 3
PY=${PYTHON:-python3}
mkdir -p "$OUT"

one_run() {  # name, extra --set arguments
  local name=$1
  shift
  $PY -m captioner.cli train --config soft_lite0_finetune --data "$DATA" --out "$OUT/$name" --no-progress \
    --set train.max_time="$MAX_TIME" "$@" > "$OUT/$name.log" 2>&1
  $PY -m captioner.cli export "$OUT/$name/model.pt" "$OUT/$name/model_fp16.pt" --half >> "$OUT/$name.log" 2>&1
  [ "${EVALUATE:-1}" = 0 ] ||
    $PY -m captioner.cli evaluate --model "$OUT/$name/model.pt" --data "$DATA" --split val --beam-size 5 \
      --tokenizer python --no-meteor --no-progress --out "$OUT/$name/val_beam5.json" >> "$OUT/$name.log" 2>&1
  echo "$name: done"
}

declare -A SETS=([frozen]="encoder.finetune_blocks=0" [full]="" [full_ls]="train.label_smoothing=0.1" [cont]=""
                [cont_low]="train.lr=2.0e-4 encoder.lr=5.0e-5"
                [lite2]="encoder.name=efficientnet_lite2 encoder.input_size=260")
pids=()
for name in ${RUNS:-frozen full full_ls}; do
  extra=()
  for s in ${SETS[$name]} "$@"; do extra+=(--set "$s"); done
  one_run "$name" "${extra[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in ${RUNS:-frozen full full_ls}; do tail -n 12 "$OUT/$name.log"; done
exit $status
