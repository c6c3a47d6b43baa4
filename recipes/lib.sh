# Shell functions the recipes share (sourced, not run). They need PY (the Python to run) and DATA (the dataset).

# train NAME ARGS...: `captioner train ARGS` into the run folder NAME, skipped when NAME/model.pt exists and
# resumed from NAME/checkpoints/last.ckpt when a previous run was interrupted
train() {
  local name=$1
  shift
  if [ -f "$name/model.pt" ]; then echo "$name: done before"; return; fi
  local resume=()
  if [ -f "$name/checkpoints/last.ckpt" ]; then resume=(--resume); fi
  $PY -m captioner.cli train --data "$DATA" --out "$name" --no-progress "${resume[@]}" "$@"
}
