"""Ensembles across encoders: `--model a.pt --model b.pt` where the files read different encoder features, each
file's decoders reading its own encoder's (synthetic data, tiny encoders)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from captioner.captioning import Captioner, caption_of, decode_batches, encode_images, read_images
from captioner.checkpoint import load_model, load_models, save_model
from captioner.data.synth import make_synth
from captioner.decoding import Hypothesis
from captioner.errors import CaptionerError
from captioner.model import model_encoder
from conftest import carrying_encoder_file, untrained_model_file


@pytest.fixture(scope="module")
def two_encoders(tmp_path_factory):
    """a.pt: the tiny encoder's 4x4 grid (features from the cache); b.pt: carries its own encoder weights (as a
    fine-tuned one does), pooled to a 3x3 grid, so its features exist only through its encoder."""
    root = tmp_path_factory.mktemp("cross")
    data = make_synth(root / "synth", n_train=8, n_val=6, n_test=2, seed=4)
    first = untrained_model_file(root / "a.pt", "soft")
    return root, data, first, carrying_encoder_file(first, root / "b.pt")


def _cli(*args, cache):
    env = {**os.environ, "CAPTIONER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "captioner.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_each_file_decodes_on_its_own_encoders_features(two_encoders):
    root, data, a, b = two_encoders
    model = load_models([a, b])
    assert model.kind == "ensemble of 2: soft + soft on 2 encoders" and model.decoder.feature_groups == [0, 1]
    images = [img for img in read_images(sorted((data / "images").glob("*.png"))[:3])[0]]
    feats = encode_images(model_encoder(model), images)
    assert feats["0.grid"].shape[1] == 16 and feats["1.grid"].shape[1] == 9  # 4x4 and 3x3 grids
    # the same as each file's own encoder gives
    own_b = encode_images(model_encoder(load_model(b)), images)
    torch.testing.assert_close(feats["1.grid"], own_b["grid"])
    # its members alone are each file's model, with that file's encoder
    second = model.member(2)
    assert second.encoder_state is not None and second.encoder["grid_size"] == 3
    hyps = decode_batches(second, own_b, beam_size=2, max_len=6)  # its decoder on b.pt's own features
    results = Captioner(second)(sorted((data / "images").glob("*.png"))[:3], beam_size=2, max_len=6)
    assert [r.tokens for r in results] == [model.vocab.decode(h.tokens) for h in hyps]
    # an empty caption (an untrained model may end at once) has no map; its description still holds
    for alphas in (torch.zeros(0), torch.zeros(0, 16)):
        out = caption_of(model, Hypothesis([], -1.0, True, alphas))
        assert out.text == "" and out.attention_of in ("the mean map of 2 decoders",
                                                                "the map of 1 of its 2 decoders")


def test_files_carrying_the_same_encoder_share_it(two_encoders, tmp_path):
    """Two files with the same embedded encoder weights read one encoder's features (one pass, and the pair
    can be written as one file); a third on other features makes a second group, not a third."""
    root, data, a, b = two_encoders
    twin = tmp_path / "b2.pt"
    save_model(twin, load_model(b))  # same encoder weights, another file
    pair = load_models([b, twin])
    assert not pair.sources and pair.encoder_state is not None and pair.kind == "ensemble of 2: soft + soft"
    images = [img for img in read_images(sorted((data / "images").glob("*.png"))[:2])[0]]
    torch.testing.assert_close(encode_images(model_encoder(pair), images)["grid"],
                               encode_images(model_encoder(load_model(b)), images)["grid"])
    save_model(tmp_path / "pair.pt", pair)  # one encoder: one file holds it
    assert load_model(tmp_path / "pair.pt").encoder_state is not None
    three = load_models([b, a, twin])
    assert len(three.sources) == 2 and three.decoder.feature_groups == [0, 1, 0]
    assert three.kind == "ensemble of 3: soft + soft + soft on 2 encoders"
    half = tmp_path / "b_half.pt"
    save_model(half, load_model(b), half=True)  # float16 weights: not the same features, its own group
    assert len(load_models([b, half]).sources) == 2


def test_evaluate_and_caption_across_encoders_from_the_command_line(two_encoders):
    root, data, a, b = two_encoders
    cache = root / "cache"
    out = root / "r.json"
    run = _cli("evaluate", "--model", a, "--model", b, "--data", data, "--tokenizer", "python", "--no-meteor",
               "--out", out, "--no-progress", "--set", "decode.block_ngram=3", cache=cache)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] == 6 and set(report["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
                                                                 "ROUGE-L", "CIDEr-D"}
    assert all(c["caption"] for c in report["captions"])
    photo = sorted((data / "images").glob("*.png"))[0]
    run = _cli("caption", "--model", a, "--model", b, photo, root / "missing.png", "--out", root / "figs",
               cache=cache)
    assert run.returncode == 3 and f"{photo.name}: " in run.stdout  # the good file captioned, the bad reported
    assert "missing.png" in run.stderr and "Traceback" not in run.stderr
    (result,) = json.loads((root / "figs" / "captions.json").read_text())["captions"]
    assert result["attention_of"] == "the map of 1 of its 2 decoders"  # the 4x4 grid's; b.pt attends over 3x3
    assert len(result["attention"][0]) == 16 and len(result["files"]) >= 2  # captioned image + attention figure
    # one file cannot hold two encoders: a one-line refusal, nothing written
    run = _cli("export", a, b, root / "both.pt", cache=cache)
    assert run.returncode != 0 and "a model file holds one encoder" in run.stderr and "Traceback" not in run.stderr
    assert not (root / "both.pt").exists()
    with pytest.raises(CaptionerError, match="holds one encoder"):
        save_model(root / "both.pt", load_models([a, b]))


def test_consensus_reranking_across_encoders_reads_the_first_files_training_features(two_encoders):
    """b.pt's features exist only through its encoder: the reranker needs a.pt's (the first file's) alone."""
    from captioner.model import with_settings
    from captioner.model_features import consensus_reranker

    root, data, a, b = two_encoders
    model = with_settings(load_models([a, b]), ["decode.consensus=true", "decode.consensus_k=2"])
    reranker = consensus_reranker(model, data, root / "cache", progress=False)
    assert reranker.key == "0.global" and reranker.index.shape[0] == 8  # the 8 training images
    out = root / "cons.json"
    run = _cli("evaluate", "--model", a, "--model", b, "--data", data, "--tokenizer", "python", "--no-meteor",
               "--out", out, "--no-progress", "--set", "decode.consensus=true", cache=root / "cache")
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(out.read_text())["images"] == 6

def test_a_file_carrying_its_encoder_encodes_the_training_images_once(two_encoders, monkeypatch):
    from captioner import model_features
    from captioner.model import with_settings

    root, data, a, b = two_encoders
    model = with_settings(load_models([b, a]), ["decode.consensus=true", "decode.consensus_k=2"])
    first = model_features.consensus_reranker(model, data, root / "cache", progress=False)
    assert first.index.shape[0] == 8 and len(list((root / "cache" / "consensus").glob("*.pt"))) == 1

    def no_encoding(*_args, **_kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(model_features, "encode_images", no_encoding)
    again = model_features.consensus_reranker(model, data, root / "cache", progress=False)
    assert torch.equal(again.index, first.index)

def test_another_vocabulary_is_refused_in_one_line(two_encoders):
    root, data, a, _ = two_encoders
    words = load_model(a)
    words.vocab.itos = [*words.vocab.itos[:-1], "zebra"]
    save_model(root / "c.pt", words)
    run = _cli("evaluate", "--model", a, "--model", root / "c.pt", "--data", data, "--tokenizer", "python",
               "--no-meteor", "--no-progress", cache=root / "cache")
    assert run.returncode != 0 and "c.pt: cannot join an ensemble" in run.stderr and "Traceback" not in run.stderr


def test_serve_offers_an_ensemble_across_encoders(two_encoders, tmp_path):
    """`serve --model best=a.pt+b.pt`: the files caption as one ensemble in the demo, each on its own encoder."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from captioner.cli import serve_models
    from captioner.serve.app import create_app

    root, data, a, b = two_encoders
    plus = tmp_path / "odd+name.pt"
    plus.write_bytes(a.read_bytes())
    models = serve_models([f"best={a}+{b}", str(plus), f"one={a}"])
    assert models == {"best": [str(a), str(b)], "odd+name": str(plus), "one": str(a)}
    buf = io.BytesIO()
    Image.new("RGB", (90, 60), (30, 200, 30)).save(buf, format="PNG")
    with TestClient(create_app(models)) as client:
        listed = client.get("/api/models").json()["models"]
        assert listed[0] == {"name": "best", "file": "a.pt + b.pt",
                             "beam_size": client.app.state.models["best"].model.config.decode.beam_size}
        r = client.post("/api/caption", files={"file": ("p.png", buf.getvalue(), "image/png")},
                        data={"model": "best", "beam_size": "2"})
        assert r.status_code == 200, r.text
        assert r.json()["model_type"] == "ensemble of 2: soft + soft on 2 encoders"
    with pytest.raises(CaptionerError, match="no such model file"):
        create_app({"x": [a, tmp_path / "missing.pt"]})
