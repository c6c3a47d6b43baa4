"""Encoder fine-tuning: features computed in the training loop, encoder weights trained and shipped."""

import pytest
import torch

from captioner.captioning import Captioner
from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.encoders import create_encoder
from captioner.errors import CaptionerError
from captioner.evaluation import evaluate
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
    result = Captioner(model)(data / "images" / "00056.png", beam_size=2)
    assert result.error is None and result.text
    report = evaluate(model, data, "test", beam_size=2, tokenizer="python", metrics=("bleu",), progress=False)
    assert report["images"] == 8 and 0 <= report["metrics"]["BLEU-4"] <= 1


def test_finetuning_only_the_last_blocks(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=32, n_val=8, n_test=2, seed=2)
    cfg = load_config("synth_soft", ["encoder.finetune=true", "encoder.finetune_blocks=1", "train.max_epochs=1",
                                     "train.batch_size=16"])
    model = load_model(train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False))
    untrained = create_encoder("tiny", weights="none")
    changed = {k for k, v in model.encoder_state.items() if not torch.equal(untrained.state_dict()[k], v)}
    last_block = untrained.blocks()[-1]
    last_names = {f"net.{n}" for n, p in untrained.net.named_parameters() if any(p is q for q in last_block.parameters())}
    assert changed and changed <= last_names, (changed, last_names)  # only the last block was trained


def test_frozen_blocks_keep_their_batchnorm_statistics():
    from torch import nn

    enc = create_encoder("mobilenet_v2", weights="none").unfreeze_last(2)
    enc.train()
    blocks = enc.blocks()
    frozen_bn = [m for b in blocks[:-2] for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    trained_bn = [m for b in blocks[-2:] for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    assert trained_bn and all(m.training for m in trained_bn)
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:-2] for p in b.parameters())


def test_max_time_stops_a_run_and_exports_its_best_epoch(tmp_path):
    """train.max_time bounds a run's wall time (a GPU lease, a queue slot): it stops early, model.pt is written."""
    data = make_synth(tmp_path / "synth", n_train=48, n_val=8, n_test=2, seed=2)
    cfg = load_config("synth_soft", ["train.max_epochs=1000", "train.max_time=00:00:00:03", "train.batch_size=16"])
    model = load_model(train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False))
    assert model.config.train.max_time == "00:00:00:03"
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] + 1 < 1000  # stopped by the clock, not by max_epochs


def test_max_time_must_be_days_hours_minutes_seconds():
    import pytest

    from captioner.errors import CaptionerError

    with pytest.raises(CaptionerError, match="train.max_time must be DD:HH:MM:SS"):
        load_config("synth_soft", ["train.max_time=8 minutes"])


def test_every_built_in_config_loads_and_the_finetune_one_trains_the_whole_encoder():
    from captioner.config import available_configs

    configs = {name: load_config(name) for name in available_configs()}  # each validates as it loads
    ft = configs["soft_lite0_finetune"]
    assert ft.encoder.finetune and ft.encoder.finetune_blocks is None and ft.encoder.lr < ft.train.lr
    assert not configs["soft_lite0"].encoder.finetune


def test_finetuning_goes_on_from_an_earlier_model(tmp_path):
    """train.init_from with encoder.finetune: the decoder (and vocabulary) start from the model named, the
    encoder from encoder.weights; with both learning rates 0 the decoder ends where it started."""
    data = make_synth(tmp_path / "synth", n_train=32, n_val=8, n_test=2, seed=2)
    first = load_model(train(load_config("synth_soft", ["encoder.finetune=true", "train.max_epochs=1",
                                                        "train.batch_size=16"]),
                             data, tmp_path / "first", cache_root=tmp_path / "cache", progress=False))
    cfg = load_config("synth_soft", ["encoder.finetune=true", "train.max_epochs=1", "train.batch_size=16",
                                     f"train.init_from={tmp_path / 'first' / 'model.pt'}", "train.lr=0",
                                     "encoder.lr=0"])
    again = load_model(train(cfg, data, tmp_path / "again", cache_root=tmp_path / "cache", progress=False))
    assert again.vocab.itos == first.vocab.itos
    start, end = first.decoder.state_dict(), again.decoder.state_dict()
    assert all(torch.equal(start[k], end[k]) for k in start)
    with pytest.raises(CaptionerError, match="SCST trains on cached features"):
        train(load_config("synth_soft", ["encoder.finetune=true", "train.scst=true",
                                         f"train.init_from={tmp_path / 'first' / 'model.pt'}"]),
              data, tmp_path / "scst", cache_root=tmp_path / "cache", progress=False)


def test_loader_workers_train_the_same_weights_as_the_main_process(tmp_path):
    """Images decoded in (persistent) worker processes: the same batches, in the same order, every epoch."""
    data = make_synth(tmp_path / "synth", n_train=32, n_val=4, n_test=2, seed=2)
    states = []
    for workers in (0, 2):
        cfg = load_config("synth_soft", ["encoder.finetune=true", "train.max_epochs=2", "train.batch_size=16",
                                         f"train.num_workers={workers}", "train.early_stop_patience=5"])
        model = load_model(train(cfg, data, tmp_path / f"run{workers}", cache_root=tmp_path / "cache",
                                 progress=False))
        states.append({**model.decoder.state_dict(), **model.encoder_state})
    assert states[0].keys() == states[1].keys()
    assert all(torch.allclose(states[0][k].float(), states[1][k].float()) for k in states[0])
