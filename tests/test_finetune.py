"""Encoder fine-tuning: features computed in the training loop, encoder weights trained and shipped."""

import torch

from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.encoders import create_encoder
from captioner.inference import caption_files, evaluate
from captioner.training.train import train


def test_finetuning_trains_the_encoder_and_ships_it(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=48, n_val=8, n_test=8, seed=2)
    cfg = load_config("synth_soft", ["encoder.finetune=true", "train.max_epochs=1", "train.batch_size=16"])
    path = train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # nothing was cached: features came from the images
    model = load_model(path)
    assert model.encoder_state is not None
    untrained = create_encoder("tiny", weights="none").state_dict()
    assert any(not torch.equal(untrained[k], v) for k, v in model.encoder_state.items())
    results, failures = caption_files(model, [data / "images" / "00056.png"], beam_size=2)
    assert not failures and results[0]["caption"]
    report = evaluate(model, data, "test", beam_size=2, tokenizer="python", metrics=("bleu",), progress=False)
    assert report["images"] == 8 and 0 <= report["metrics"]["BLEU-4"] <= 1
