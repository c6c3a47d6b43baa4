import shutil
from pathlib import Path

import pytest
import torch

from captioner.config import ModelConfig
from captioner.decoders import build_decoder

VOCAB = 20  # ids 0..3 are <pad> <start> <end> <unk>
GLOBAL_DIM, GRID_DIM, LOCATIONS = 24, 12, 9


def small_decoder(kind: str, **overrides):
    cfg = ModelConfig(**{"type": kind, "embed_dim": 16, "hidden_dim": 32, "attention_dim": 8, "dropout": 0.0,
                         **overrides})
    return build_decoder(cfg, VOCAB, GLOBAL_DIM, GRID_DIM)


def random_feats(batch: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"global": torch.randn(batch, GLOBAL_DIM, generator=gen),
            "grid": torch.randn(batch, LOCATIONS, GRID_DIM, generator=gen)}


def random_captions(batch: int, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    caps = torch.randint(4, VOCAB, (batch, length), generator=gen)
    caps[:, 0], caps[:, -1] = 1, 2
    return caps


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Caches the tests make (features, ONNX exports) go to a folder of the test session's, not the user's."""
    import os

    if "CAPTIONER_CACHE" not in os.environ:
        os.environ["CAPTIONER_CACHE"] = str(tmp_path_factory.mktemp("captioner-cache"))


def untrained_model_file(path: Path, kind: str = "soft", hard_inference: str | None = None) -> Path:
    """An untrained model on the tiny encoder (synth_KIND config): enough to exercise commands end to end.

    Its <end> logit is pushed down so that it always says some words (up to the decoder's max_len): an
    untrained model otherwise tends to end at once, and the drawing code would only ever see empty captions.
    """
    from captioner.checkpoint import save_model
    from captioner.config import load_config
    from captioner.data.vocab import Vocab
    from captioner.encoders import create_encoder
    from captioner.model import CaptionModel

    cfg = load_config(f"synth_{kind}", [f"model.hard_inference={hard_inference}"] if hard_inference else None)
    vocab = Vocab.build([["a", "red", "circle", "above", "a", "blue", "square"]])
    enc = create_encoder("tiny", weights="none")
    decoder = build_decoder(cfg.model, len(vocab), enc.global_dim, enc.grid_dim).eval()
    with torch.no_grad():
        decoder.fc.bias[vocab.end_id] -= 8.0
    return save_model(path, CaptionModel(decoder, vocab, cfg, enc.describe()))


def carrying_encoder_file(first: Path, path: Path) -> Path:
    """``first``'s decoder with an encoder of its own (other tiny-encoder weights, pooled to a 3x3 grid), carried
    in the file as a fine-tuned one is: its features exist only through that encoder."""
    import dataclasses

    from captioner.checkpoint import load_model, save_model
    from captioner.encoders import create_encoder

    enc = create_encoder("tiny", weights="none", grid_size=3)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))  # other weights than first's encoder
    other = dataclasses.replace(load_model(first), encoder=enc.describe(), encoder_state=enc.state_dict())
    other.config.encoder.grid_size = 3
    return save_model(path, other)


def as_original_flickr8k(reference: Path, out: Path) -> Path:
    """The reference-layout dataset rewritten as Flickr8k is distributed: Flickr8k.token.txt and the split
    lists in Flickr8k_text/, the images in Flicker8k_Dataset/."""
    text, images = out / "Flickr8k_text", out / "Flicker8k_Dataset"
    text.mkdir(parents=True)
    shutil.copytree(reference / "images", images)
    counts: dict[str, int] = {}
    lines = []
    for line in (reference / "captions.txt").read_text().splitlines():
        image, caption = line.split("\t", 1)
        lines.append(f"{image}#{counts.get(image, 0)}\t{caption}")
        counts[image] = counts.get(image, 0) + 1
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, name in [("train", "train"), ("val", "dev"), ("test", "test")]:
        shutil.copy(reference / "splits" / f"{split}.txt", text / f"Flickr_8k.{name}Images.txt")
    return out


def shuffled_baseline(report: dict) -> dict:
    """Scores of an evaluate report's captions when every image gets the generated caption of another image:
    what a model that ignores the image would score (training tests must beat it)."""
    import random

    from captioner.metrics.coco import score_corpus

    caps = [c["caption"] for c in report["captions"]]
    random.Random(0).shuffle(caps)
    cands = {c["image"]: cap for c, cap in zip(report["captions"], caps, strict=True)}
    refs = {c["image"]: c["references"] for c in report["captions"]}
    return score_corpus(cands, refs, metrics=("bleu", "cider"), tokenizer="python")[0]
