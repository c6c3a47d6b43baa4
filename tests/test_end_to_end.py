"""End to end on the synthetic shapes: each model learns, and attention looks at the object being named."""

import json
import random

import pytest
import torch

from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import load_objects, make_synth
from captioner.decoding import beam_search
from captioner.inference import evaluate
from captioner.metrics.coco import score_corpus
from captioner.training.train import load_features, train

pytestmark = pytest.mark.slow
COLOURS = {"red", "green", "blue", "yellow"}
SHAPES = {"circle", "square", "triangle"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth") / "data", n_train=500, n_val=60, n_test=80, seed=1)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """Train NIC, soft and hard once for the whole module."""
    root = tmp_path_factory.mktemp("runs")
    models = {}
    for kind in ("nic", "soft", "hard"):
        cfg = load_config(f"synth_{kind}")
        models[kind] = train(cfg, synth, root / kind, cache_root=root / "cache", progress=False)
    return models, root / "cache"


def shuffled_baseline(report: dict) -> float:
    """BLEU-4 when every image gets the generated caption of another image."""
    caps = [c["caption"] for c in report["captions"]]
    random.Random(0).shuffle(caps)
    cands = {c["image"]: cap for c, cap in zip(report["captions"], caps, strict=True)}
    refs = {c["image"]: c["references"] for c in report["captions"]}
    return score_corpus(cands, refs, metrics=("bleu",), tokenizer="python")[0]["BLEU-4"]


@pytest.mark.parametrize("kind", ["nic", "soft", "hard"])
def test_learns_far_above_shuffled_captions(trained, synth, kind, tmp_path):
    models, cache = trained
    model = load_model(models[kind])
    report = evaluate(model, synth, "test", beam_size=3, cache_root=cache, tokenizer="python",
                      metrics=("bleu", "cider"), out=tmp_path / "report.json", progress=False)
    bleu4, baseline = report["metrics"]["BLEU-4"], shuffled_baseline(report)
    print(f"{kind}: test BLEU-4 {bleu4:.3f}, shuffled-caption baseline {baseline:.3f}")
    assert bleu4 >= 0.5 and bleu4 >= baseline + 0.25
    assert json.loads((tmp_path / "report.json").read_text())["images"] == 80


def _cells(box, size=64, grid=4):
    """Grid cells (row-major) that the object's box overlaps."""
    step = size / grid
    x0, y0, x1, y1 = box
    return [r * grid + c for r in range(grid) for c in range(grid)
            if x0 < (c + 1) * step and x1 > c * step and y0 < (r + 1) * step and y1 > r * step]


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_attention_looks_at_the_named_object(trained, synth, kind):
    models, cache = trained
    model = load_model(models[kind])
    _, records, _, features = load_features(model.config, synth, cache, progress=False)
    tests = [r for r in records if r.split == "test"]
    objects = load_objects(synth)
    glob, grid = features.load_all()
    rows = torch.tensor([features.index[r.name] for r in tests])
    hyps = beam_search(model.decoder, {"global": glob[rows].float(), "grid": grid[rows].float()},
                       model.vocab.start_id, model.vocab.end_id, beam_size=1, max_len=16)
    mass, uniform = [], []
    for record, hyp in zip(tests, hyps, strict=True):
        words = model.vocab.decode(hyp.tokens)
        for t in range(1, len(words)):
            if words[t] in SHAPES and words[t - 1] in COLOURS:
                match = [o for o in objects[record.name] if o["shape"] == words[t] and o["color"] == words[t - 1]]
                if match:
                    cells = _cells(match[0]["box"])
                    mass.append(float(hyp.alphas[t, cells].sum()))
                    uniform.append(len(cells) / hyp.alphas.size(1))
    assert len(mass) > 50
    mean_mass, mean_uniform = sum(mass) / len(mass), sum(uniform) / len(uniform)
    print(f"{kind}: attention mass on the named object {mean_mass:.2f} vs uniform {mean_uniform:.2f}")
    assert mean_mass > 2 * mean_uniform
