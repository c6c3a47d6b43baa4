"""Test-time flip (decode.flip): every decoder also reads the mirrored image's features, the two views decoding as
one ensemble (synthetic data, tiny encoders)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import ImageOps

from captioner.captioning import (
    Captioner,
    decode_batches,
    decoding_decoder,
    encode_images,
    read_images,
    with_mirrored,
)
from captioner.checkpoint import load_model, load_models
from captioner.data.synth import make_synth
from captioner.decoders.ensemble import EnsembleDecoder, _unmirror
from captioner.encoders import create_encoder
from captioner.errors import CaptionerError
from captioner.features import cache_dir_for
from captioner.model import model_encoder, with_settings
from captioner.model_features import split_features
from conftest import carrying_encoder_file, untrained_model_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """a.pt reads the tiny encoder's cached 4x4 grid; b.pt carries its own encoder (3x3 grid, no cache)."""
    root = tmp_path_factory.mktemp("flip")
    data = make_synth(root / "synth", n_train=8, n_val=6, n_test=2, seed=5)
    first = untrained_model_file(root / "a.pt", "soft")
    carrying_encoder_file(first, root / "b.pt")
    images = read_images(sorted((data / "images").glob("*.png"))[:3])[0]
    return root, data, first, root / "b.pt", images


def test_a_mirroring_encoder_reads_the_image_flipped_and_caches_apart():
    enc = create_encoder("tiny", weights="none").eval()
    images = torch.randn(2, 3, enc.input_size, enc.input_size)
    plain = enc(images.flip(-1))
    enc.mirror = True
    mirrored = enc(images)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(plain, mirrored, strict=True))
    assert enc.describe()["mirror"] is True and cache_dir_for("fp", enc).name.endswith("-mirror")
    enc.mirror = False
    assert "mirror" not in enc.describe()  # caches made before the option still match


def test_an_attention_map_of_the_mirrored_image_is_flipped_back():
    alpha = torch.zeros(1, 9)
    alpha[0, 0] = 1.0  # top-left cell of a 3x3 grid, in the mirrored image: the top-right of the image
    assert _unmirror(alpha).view(3, 3)[0, 2] == 1.0 and _unmirror(alpha).sum() == 1.0
    with pytest.raises(ValueError, match="one entry per member"):
        EnsembleDecoder([torch.nn.Identity()], mirrored=[False, True])


@pytest.mark.parametrize("mean", ["prob", "logprob"])
def test_two_identical_views_decode_as_one(files, mean):
    """Averaging a distribution with itself changes nothing: the flip ensemble, fed the same features twice,
    gives the plain model's captions; its maps are the mean of the map and its mirror."""
    _, _, a, _, images = files
    model = load_model(a)
    flip = with_settings(load_model(a), ["decode.flip=true", f"decode.ensemble_mean={mean}"])
    decoder = decoding_decoder(flip)
    assert len(decoder.members) == 2 and decoder.mirrored == [False, True] and decoder.feature_groups == [0, 1]
    feats = encode_images(model_encoder(model), images)
    twice = with_mirrored(flip, feats, feats)
    assert set(twice) == {"0.global", "0.grid", "1.global", "1.grid"}
    plain, both = decode_batches(model, feats), decode_batches(flip, twice)
    assert [h.tokens for h in both] == [h.tokens for h in plain]
    assert torch.allclose(both[0].alphas, (plain[0].alphas + _unmirror(plain[0].alphas)) / 2, atol=1e-5)


def test_photos_and_splits_get_the_mirrored_images_features(files):
    root, data, a, b, images = files
    cache = root / "cache"
    pair = with_settings(load_models([a, b]), ["decode.flip=true"])
    chosen, feats, failed = split_features(pair, data, "val", cache, progress=False)
    assert len(chosen) == 6 and not failed
    assert {k.split(".")[0] for k in feats} == {"0", "1", "2", "3"}  # a, b, mirrored a, mirrored b
    assert feats["2.grid"].shape[1] == 16 and feats["3.grid"].shape[1] == 9
    mirrored_dirs = [p.name for p in (cache / "features").iterdir() if p.name.endswith("-mirror-val")]
    assert len(mirrored_dirs) == 1  # a.pt's split, flipped, cached once; b.pt's encoder runs each time
    photos = read_images([r.image for r in chosen])[0]
    by_encoders = encode_images(model_encoder(pair), [ImageOps.mirror(img) for img in photos])
    for j, k in [(0, 2), (1, 3)]:
        assert torch.allclose(feats[f"{k}.grid"].float(), by_encoders[f"{j}.grid"], atol=2e-3)
    decoder = decoding_decoder(pair)
    assert decoder.feature_groups == [0, 1, 2, 3] and decoder.mirrored == [False, False, True, True]
    # caption a photo: both views, one caption and one map on the image's own grid
    result = Captioner(load_model(a))(images[0], flip=True)
    assert result.text and result.attention.shape[1:] == (4, 4)


def _cli(*args, cache):
    env = {**os.environ, "CAPTIONER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "captioner.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_evaluate_with_flip_and_consensus_from_the_command_line(files):
    root, data, a, _, _ = files
    out = root / "flip.json"
    run = _cli("evaluate", "--model", a, "--data", data, "--tokenizer", "python", "--no-meteor", "--out", out,
               "--no-progress", "--set", "decode.flip=true", "--set", "decode.ensemble_mean=logprob",
               "--set", "decode.consensus=true", "--set", "decode.consensus_k=2", cache=root / "cli-cache")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] == 6 and all(c["caption"] for c in report["captions"])


def test_training_batches_read_the_mirrored_image_for_about_half_the_captions():
    from captioner.training.data import CaptionBatches

    plain = {"global": torch.zeros(4, 3), "grid": torch.zeros(4, 2, 3)}
    mirrored = ({"global": torch.ones(3, 3), "grid": torch.ones(3, 2, 3)}, torch.tensor([2, 0, 1, -1]))
    captions, rows = torch.ones(400, 5, dtype=torch.long), torch.arange(400) % 3  # rows 0-2: each has a mirror
    batch = CaptionBatches(plain, captions, rows, mirrored)[list(range(400))]
    flipped = batch["feats"]["global"][:, 0] == 1  # [400]
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(batch["feats"]["grid"][:, 0, 0] == 1, flipped)  # the grid with its own image's global
    assert CaptionBatches(plain, captions, rows)[list(range(400))]["feats"]["global"].sum() == 0


def test_training_with_flip_caches_the_mirrored_training_images(tmp_path):
    from captioner.config import load_config
    from captioner.training.train import train

    data = make_synth(tmp_path / "synth", n_train=12, n_val=4, n_test=2, size=32)
    sets = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
            "train.max_epochs=1", "train.flip=true"]
    model = load_model(train(load_config("synth_soft", sets), data, tmp_path / "run", tmp_path / "cache",
                             progress=False))
    assert model.config.train.flip
    (folder,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.name.endswith("-mirror-train")]
    assert len(json.loads((folder / "meta.json").read_text())["names"]) == 12  # the training images alone
    with pytest.raises(CaptionerError, match="not with encoder.finetune"):
        load_config("synth_soft", ["train.flip=true", "encoder.finetune=true"])
