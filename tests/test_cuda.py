"""On a CUDA GPU: decoding, feature extraction, captioning and training give what they give on the CPU.

Skipped where torch sees no GPU (CI); run on a GPU machine with `pytest tests/test_cuda.py`. With a GPU
visible the rest of the suite trains on it too (train.accelerator auto, bf16/16-mixed precision).
"""

import pytest
import torch

from captioner.captioning import Captioner, decode_batches, encode_images, read_images
from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.decoding import beam_search
from captioner.encoders import create_encoder
from captioner.features import extract_features, load_features
from captioner.training.train import _precision, train
from conftest import random_feats, small_decoder, untrained_model_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")


def _on(feats: dict, device) -> dict:
    return {k: v.to(device) for k, v in feats.items()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth") / "data", n_train=300, n_val=40, n_test=40, seed=3)


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "uniform", "updown"])
def test_beam_search_on_gpu_matches_cpu(kind):
    decoder = small_decoder(kind).eval()
    feats = random_feats(12, seed=1)
    options = {"beam_size": 4, "max_len": 12, "block_ngram": 3, "length_penalty": 1.0}
    cpu = beam_search(decoder, feats, 1, 2, **options)
    gpu = beam_search(decoder.to(GPU), _on(feats, GPU), 1, 2, **options)
    assert [h.tokens for h in gpu] == [h.tokens for h in cpu]
    assert [h.score for h in gpu] == pytest.approx([h.score for h in cpu], abs=1e-3)
    if cpu[0].alphas is not None:
        assert gpu[0].alphas.device.type == "cpu"  # results come back to the CPU
        torch.testing.assert_close(gpu[0].alphas, cpu[0].alphas, atol=1e-4, rtol=1e-3)


def test_feature_extraction_on_gpu_matches_cpu(synth, tmp_path):
    from captioner.data.readers import load_dataset

    records = [r for r in load_dataset(synth).records if r.split == "val"]
    encoder = create_encoder("tiny", weights="none")
    cpu = extract_features(records, encoder, tmp_path / "cpu", progress=False)
    gpu = extract_features(records, encoder, tmp_path / "gpu", device=GPU, batch_size=16, num_workers=2,
                           progress=False)
    assert next(encoder.parameters()).device.type == "cpu"  # the encoder goes back where it was
    (g_cpu, x_cpu), (g_gpu, x_gpu) = cpu.load_rows(list(range(len(records)))), gpu.load_rows(list(range(len(records))))
    torch.testing.assert_close(g_gpu.float(), g_cpu.float(), atol=2e-2, rtol=2e-2)  # fp16 autocast on the GPU
    torch.testing.assert_close(x_gpu.float(), x_cpu.float(), atol=2e-2, rtol=2e-2)


def test_caption_files_on_gpu(tmp_path, synth):
    model = load_model(untrained_model_file(tmp_path / "m.pt"))
    paths = sorted((synth / "images").glob("*.png"))[:6] + [tmp_path / "missing.jpg"]
    cpu = Captioner(model)(paths, beam_size=3)
    feats_cpu = encode_images(create_encoder("tiny", weights="none"), [i for i in read_images(paths)[0] if i])
    model.to(GPU)
    gpu = Captioner(model)(paths, beam_size=3)
    assert [r.error is not None for r in gpu] == [r.error is not None for r in cpu] == [False] * 6 + [True]
    assert all(r.text for r in gpu[:6])
    # the same features give the same captions on either device (float32 decoding)
    assert [" ".join(model.vocab.decode(h.tokens)) for h in decode_batches(model, feats_cpu, beam_size=3)] \
        == [r.text for r in cpu[:6]]


def test_training_on_gpu_uses_mixed_precision_and_loads_on_cpu(synth, tmp_path):
    cfg = load_config("synth_soft", ["train.max_epochs=4"])
    assert _precision(cfg) in ("bf16-mixed", "16-mixed")
    path = train(cfg, synth, tmp_path / "run", cache_root=tmp_path / "cache", progress=False)
    model = load_model(path)  # a model trained on a GPU loads on a CPU-only machine
    assert next(model.decoder.parameters()).device.type == "cpu"
    _, records, _, cache = load_features(model.config, synth, tmp_path / "cache", progress=False)
    assert cache.directory.is_dir()
    hyps = decode_batches(model, dict(zip(("global", "grid"), cache.load_rows([0, 1, 2]), strict=True)))
    assert all(h.tokens for h in hyps)
    assert model.metrics  # selected on decoded val metrics, as on the CPU
