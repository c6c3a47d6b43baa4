"""End to end on the synthetic shapes: each model learns, and attention looks at the object being named."""

import json

import pytest
import torch

from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import load_objects, make_synth
from captioner.decoding import beam_search
from captioner.evaluation import evaluate
from captioner.features import load_features
from captioner.training.train import train
from conftest import shuffled_baseline

pytestmark = pytest.mark.slow
COLOURS = {"red", "green", "blue", "yellow"}
SHAPES = {"circle", "square", "triangle"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth") / "data", n_val=60, n_test=80, seed=1)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """Train NIC, soft, hard and Up-Down once for the whole module."""
    root = tmp_path_factory.mktemp("runs")
    models = {}
    for kind in ("nic", "soft", "hard", "updown"):
        cfg = load_config(f"synth_{kind}")
        models[kind] = train(cfg, synth, root / kind, cache_root=root / "cache", progress=False)
    return models, root / "cache"


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "updown"])
def test_learns_far_above_shuffled_captions(trained, synth, kind, tmp_path):
    models, cache = trained
    model = load_model(models[kind])
    report = evaluate(model, synth, "test", beam_size=3, cache_root=cache, tokenizer="python",
                      metrics=("bleu", "cider"), out=tmp_path / "report.json", progress=False,
                      report_dir=tmp_path / "gallery")
    bleu4, cider = report["metrics"]["BLEU-4"], report["metrics"]["CIDEr-D"]
    base = shuffled_baseline(report)
    print(f"{kind}: test BLEU-4 {bleu4:.3f} CIDEr-D {cider:.2f}; shuffled captions: BLEU-4 {base['BLEU-4']:.3f} "
          f"CIDEr-D {base['CIDEr-D']:.2f}")
    # the captions share much of their wording ("a ... is to the left of a ..."), so a shuffled caption
    # already gets BLEU-4 ~0.43; what it gets wrong (colours, shapes, relations) is what CIDEr-D weighs
    assert bleu4 >= base["BLEU-4"] + 0.08
    assert cider >= 1.5 * base["CIDEr-D"]
    assert json.loads((tmp_path / "report.json").read_text())["images"] == 80
    page = (tmp_path / "gallery" / "index.html").read_text()
    assert page.count('class="card"') == 80 and len(list((tmp_path / "gallery" / "images").glob("*.jpg"))) == 80
    assert report["captions"][0]["caption"] in page


def _cells(box, size=64, grid=4):
    """Grid cells (row-major) that the object's box overlaps."""
    step = size / grid
    x0, y0, x1, y1 = box
    return [r * grid + c for r in range(grid) for c in range(grid)
            if x0 < (c + 1) * step and x1 > c * step and y0 < (r + 1) * step and y1 > r * step]


@pytest.mark.parametrize("kind", ["soft", "hard", "updown"])
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
    # While the model says "red circle", how much attention falls on the red circle, on the other
    # object, and what would a uniform map give? (mean over the colour and the shape word)
    named, other, uniform = [], [], []
    for record, hyp in zip(tests, hyps, strict=True):
        words = model.vocab.decode(hyp.tokens)
        for t in range(1, len(words)):
            if words[t] in SHAPES and words[t - 1] in COLOURS:
                objs = objects[record.name]
                match = [o for o in objs if (o["color"], o["shape"]) == (words[t - 1], words[t])]
                rest = [o for o in objs if (o["color"], o["shape"]) != (words[t - 1], words[t])]
                if match and rest:
                    cells, other_cells = _cells(match[0]["box"]), _cells(rest[0]["box"])
                    named.append(float(hyp.alphas[t - 1 : t + 1, cells].sum()) / 2)
                    other.append(float(hyp.alphas[t - 1 : t + 1, other_cells].sum()) / 2)
                    uniform.append(len(cells) / hyp.alphas.size(1))
    assert len(named) > 50
    mean = {name: sum(v) / len(v) for name, v in [("named", named), ("other", other), ("uniform", uniform)]}
    print(f"{kind}: attention mass on the named object {mean['named']:.2f}, on the other object "
          f"{mean['other']:.2f}, uniform {mean['uniform']:.2f}")
    assert mean["named"] > 2 * mean["uniform"]
    assert mean["named"] > mean["other"]
