"""The paper's five configurations (ResNet-101 / VGG-19 encoders) train end to end: random encoder weights
(their ImageNet weights are a download) and small images, a few steps each."""

import pytest
import torch

from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.training.train import train

CONFIGS = ["nic_resnet101", "soft_vgg19", "soft_resnet101", "hard_vgg19", "hard_resnet101"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("seed") / "synth", n_train=12, n_val=4, n_test=2, size=64)


@pytest.mark.parametrize("name", CONFIGS)
def test_each_paper_config_trains(name, data, tmp_path):
    small = ["encoder.weights=none", "encoder.input_size=64", "encoder.grid_size=2", "train.batch_size=16",
             "train.max_epochs=1", "model.embed_dim=32", "model.hidden_dim=32", "model.attention_dim=16"]
    cfg = load_config(name, small)
    path = train(cfg, data, tmp_path / "run", tmp_path / "cache", progress=False)
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["encoder"]["name"] == cfg.encoder.name and saved["config"]["model"]["type"] == cfg.model.type
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    grid = {"resnet101": 2048, "vgg19": 512}[cfg.encoder.name]
    assert saved["grid_dim"] == grid
