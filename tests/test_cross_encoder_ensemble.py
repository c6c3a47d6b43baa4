"""scripts/cross_encoder_ensemble.py: models on different encoders decode as one ensemble (synthetic data)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from captioner.checkpoint import load_model, save_model
from captioner.data.synth import make_synth
from captioner.encoders import create_encoder
from conftest import untrained_model_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cross_encoder_ensemble.py"


def test_two_models_on_different_encoders_caption_a_split_as_one(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=8, n_val=6, n_test=2, seed=4)
    first = untrained_model_file(tmp_path / "a.pt", "soft")  # the tiny encoder's 4x4 grid, from the cache
    # the other one carries its own encoder (as a fine-tuned one does), pooled to a 3x3 grid
    enc = create_encoder("tiny", weights="none", grid_size=3)
    other = load_model(first)
    other = dataclasses.replace(other, encoder=enc.describe(), encoder_state=enc.state_dict())
    other.config.encoder.grid_size = 3
    save_model(tmp_path / "b.pt", other)
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, str(SCRIPT), str(first), str(tmp_path / "b.pt"), "--data", str(data), "--tokenizer",
           "python", "--no-meteor", "--out", str(tmp_path / "r.json"), "--cache", str(tmp_path / "cache"),
           "--set", "decode.block_ngram=3"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ensemble of 2: soft + soft" in run.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 6 and set(report["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
                                                                 "ROUGE-L", "CIDEr-D"}
    assert all(c["caption"] for c in report["captions"])
    # another vocabulary: one line naming the file
    words = load_model(first)
    words.vocab.itos = [*words.vocab.itos[:-1], "zebra"]
    save_model(tmp_path / "c.pt", words)
    bad = subprocess.run([*cmd[:3], str(tmp_path / "c.pt"), *cmd[4:]], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "c.pt: another vocabulary" in bad.stderr and "Traceback" not in bad.stderr
