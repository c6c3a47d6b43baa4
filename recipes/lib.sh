# Shell functions and settings the recipes share (sourced, not run). They need PY (the Python to run) and DATA (the dataset).

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

# One SCST epoch after cross-entropy, as the shipped model's (CIDEr-D reward, lr 1e-5, mean-of-samples baseline,
# no learning-rate warm-up): `train NAME_scst --config NAME/config.yaml --set train.init_from=NAME/model.pt
# "${SCST[@]}"`
SCST=(--set train.scst=true --set train.lr=1.0e-5 --set train.batch_size=32 --set train.scst_baseline=mean
      --set train.scst_max_len=16 --set train.scst_samples=5 --set train.monitor=cider --set train.max_time=null
      --set train.max_epochs=1 --set train.warmup_steps=0)

# The best recipe's decoding (recipes/best_recipe.sh's last report): its teacher in distill.sh, its ensembles
# in decoder_families.sh
BEST_DECODE=(--set decode.block_ngram=3 --set model.hard_inference=expected --set decode.consensus_k=30
             --set decode.length_penalty=0.7 --set decode.consensus=true --set decode.consensus_weight=1.5
             --set decode.ensemble_mean=logprob --set decode.flip=true)
