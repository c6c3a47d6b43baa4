"""recipes/after_finetune.sh: from a fine-tuned model to a scored two-decoder ensemble file (synthetic data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.training.train import train

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "after_finetune.sh"


def test_after_finetune_makes_a_scored_ensemble_and_resumes(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=48, n_val=8, n_test=2, seed=3)
    cfg = load_config("synth_soft", ["encoder.finetune=true", "train.max_epochs=1", "train.batch_size=16"])
    start = train(cfg, data, tmp_path / "gpu", cache_root=tmp_path / "cache", progress=False)
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": "synth_soft", "SCST_CONFIG": "synth_soft",
           "EVAL_ARGS": "--no-meteor --tokenizer python", "CAPTIONER_CACHE": str(tmp_path / "cache")}
    cmd = ["bash", str(SCRIPT), str(start), str(data), str(tmp_path / "out"), "train.max_epochs=1",
           "train.batch_size=16"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "out"
    ensemble = load_model(out / "ensemble.pt")
    assert ensemble.kind == "ensemble of 2: soft + soft" and ensemble.encoder_state is not None
    assert ensemble.config.decode.length_penalty == 1.0 and ensemble.config.decode.block_ngram == 3
    assert load_model(out / "scst" / "model.pt").config.train.scst
    smooth = load_model(out / "smooth" / "model.pt").config.train
    assert smooth.label_smoothing == 0.1 and smooth.monitor == "cider"
    report = json.loads((out / "ensemble_val_beam5.json").read_text())
    assert report["images"] == 8 and "CIDEr-D" in report["metrics"]
    assert not (out / "decoder").exists()  # by default SCST starts from the fine-tuned model's decoder
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # every stage done before
    assert again.returncode == 0 and again.stdout.count("done before") == 2, again.stderr[-2000:]
    # DECODER_EPOCHS > 0: cross-entropy epochs on the frozen features first, SCST from their best
    run = subprocess.run(cmd, env={**env, "DECODER_EPOCHS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "scst: done before" in run.stdout, run.stderr[-2000:]
    assert load_model(out / "decoder" / "model.pt").config.train.init_from == str(start)
