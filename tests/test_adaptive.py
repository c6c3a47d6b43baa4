"""Knowing When to Look (Lu et al. 2017): spatial attention, and adaptive attention with a visual sentinel.

The per-step checks every decoder gets (teacher forcing = stepping, batched beam = per-image beam, ...) run
over these two kinds too, in test_decoders.py and test_decoding.py.
"""


import math

import numpy as np
import pytest
import torch

from captioner.captioning import Captioner
from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.decoders.base import Decoder
from captioner.decoders.ensemble import EnsembleDecoder
from captioner.decoding import beam_search
from captioner.evaluation import evaluate
from captioner.features import load_features
from captioner.training.train import train
from captioner.viz.attention import attention_figure
from conftest import (
    LOCATIONS,
    random_captions,
    random_feats,
    shuffled_baseline,
    small_decoder,
    untrained_model_file,
)

KINDS = ["spatial", "adaptive"]
FUNCTION_WORDS = {"a", "the", "of", "to", "is", "there"}  # the synthetic captions' words that name nothing
NOUNS = {"circle", "square", "triangle"}


def _sentinel_weight(dec, feats, caps) -> torch.Tensor:
    """beta_t of every word of teacher-forced captions: 1 - the attention on the grid, [B, T]."""
    with torch.no_grad():
        return 1 - dec.teacher_forcing(feats, caps)["alphas"].sum(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind):
    dec = small_decoder(kind).train()
    dec.loss(random_feats(4), random_captions(4))["loss"].backward()
    missing = [name for name, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert hasattr(dec, "att_sentinel") == (kind == "adaptive")


@pytest.mark.parametrize("kind", KINDS)
def test_the_attention_layer_has_the_configured_size(kind):
    dec = small_decoder(kind)  # hidden_dim 32, attention_dim 8
    assert dec.att_feat.out_features == dec.att_hidden.out_features == dec.att_score.in_features == 8
    assert dec.has_sentinel == (kind == "adaptive") and not small_decoder("soft").has_sentinel


@pytest.mark.parametrize("kind", KINDS)
def test_fast_teacher_forcing_has_the_plain_loops_gradients(kind):
    """Attention for all words at once after the LSTM loop = the per-step loop of the base class."""
    dec = small_decoder(kind).eval()
    feats, caps = random_feats(3), random_captions(3)

    def grads(teacher_forcing):
        dec.zero_grad()
        out = teacher_forcing(dec, feats, caps)
        (out["logits"].square().mean() + out["alphas"].square().mean()).backward()
        return {name: p.grad.clone() for name, p in dec.named_parameters()}

    fast, plain = grads(type(dec).teacher_forcing), grads(Decoder.teacher_forcing)
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_scheduled_sampling_takes_the_plain_loop(kind):
    dec = small_decoder(kind).eval()
    out = dec.teacher_forcing(random_feats(2), random_captions(2), sample_prob=0.5)
    assert out["logits"].shape == (2, 6, 20) and out["alphas"].shape == (2, 6, LOCATIONS)


def test_maps_sum_to_one_minus_the_sentinel_weight():
    """The map returned per word is alpha^ on the grid: it sums to 1 with spatial attention, to 1 - beta_t with
    the sentinel; and c^_t = beta_t s_t + (1 - beta_t) c_t as the paper writes it."""
    feats, caps = random_feats(3), random_captions(3)
    spatial = small_decoder("spatial").eval()
    torch.testing.assert_close(spatial.teacher_forcing(feats, caps)["alphas"].sum(-1), torch.ones(3, 6))
    dec = small_decoder("adaptive").eval()
    with torch.no_grad():
        dec.att_sentinel.bias.zero_()  # open the sentinel a little
        ctx = dec.encode(feats)
        state = dec.init_state(ctx)
        x = torch.cat([dec.embed(caps[:, 0]), ctx["v_g"]], dim=1)
        h, c = dec.lstm(x, (state["h"], state["c"]))
        s = dec.visual_sentinel(x, state["h"], c)
        logits, _, looks = dec.step_logits(ctx, state, caps[:, 0])
        beta = 1 - looks.sum(1, keepdim=True)  # [B, 1]
        alpha = looks / (1 - beta)  # the spatial attention alone: [B, L]
        c_t = torch.bmm(alpha.unsqueeze(1), ctx["v"]).squeeze(1)
        expected = dec.fc(beta * s + (1 - beta) * c_t + h)
    assert ((beta > 0.01) & (beta < 0.99)).all()
    torch.testing.assert_close(logits, expected)


def test_the_sentinel_starts_closed():
    beta = _sentinel_weight(small_decoder("adaptive").eval(), random_feats(4), random_captions(4))
    assert float(beta.max()) < 0.05


@pytest.mark.parametrize("attention_dim", [8, 64])
def test_how_closed_the_sentinel_starts_is_a_setting_in_nats_at_any_attention_size(attention_dim):
    feats, caps = random_feats(4), random_captions(4)
    closed, open_ = (small_decoder("adaptive", sentinel_start=s, attention_dim=attention_dim).eval()
                     for s in (1.0, 0.0))
    ratio = float(_sentinel_weight(open_, feats, caps).mean()) / float(_sentinel_weight(closed, feats, caps).mean())
    assert ratio == pytest.approx(math.e, rel=0.2)  # its score starts 1 nat lower: beta_t about e times smaller
    capped = small_decoder("adaptive", sentinel_start=100.0, attention_dim=attention_dim).eval()
    assert torch.isfinite(capped.att_sentinel.bias).all()  # at most |w_h|_1 nats down


def test_the_sentinel_weight_is_logged_not_minimised():
    feats, caps = random_feats(4), random_captions(4)
    open_ = small_decoder("adaptive", sentinel_start=0.0).eval()
    logged = open_.loss(feats, caps)
    mask = caps[:, 1:] != 0
    assert float(logged["log_sentinel"]) == pytest.approx(float(_sentinel_weight(open_, feats, caps)[mask].mean()))
    assert logged["loss"].item() == pytest.approx(logged["nll"].item())  # logged, not minimised
    assert "log_sentinel" not in small_decoder("spatial").loss(feats, caps)


def test_ensembles_and_mirrored_views_carry_the_sentinel_weight():
    """An ensemble's map is its members' mean map: with an adaptive member it sums to the members' mean
    1 - beta_t (a soft member always looks), and the beam search carries it as it carries any map."""
    adaptive, soft = small_decoder("adaptive").eval(), small_decoder("soft").eval()
    with torch.no_grad():
        adaptive.att_sentinel.bias.zero_()  # open the sentinel a little
    feats = random_feats(3)
    for members, mirrored, lowest in [([adaptive, soft], None, 0.5), ([adaptive, adaptive], [False, True], 0.0)]:
        hyps = beam_search(EnsembleDecoder(members, mirrored=mirrored), feats, 1, 2, beam_size=3, max_len=6)
        for h in hyps:
            looked = h.alphas.sum(-1)  # [T]
            assert h.alphas.shape == (len(h.tokens), LOCATIONS)
            assert ((looked > lowest) & (looked < 0.99)).all()


def test_the_figure_shows_how_much_each_word_looked():
    import matplotlib.pyplot as plt

    words = ["a", "red", "circle"]
    maps = np.random.default_rng(0).dirichlet(np.ones(16), size=3) * np.array([[0.1], [0.9], [0.6]])
    fig = attention_figure(_photo(), words, maps, looked=[0.1, 0.9, 0.6])
    titles = [ax.get_title() for ax in fig.axes]
    assert "a · 1−β 0.10" in titles and "red · 1−β 0.90" in titles
    assert "1−β" in fig._suptitle.get_text()
    plt.close(fig)


def test_captions_say_how_much_each_word_looked_alone_in_ensembles_and_with_flip(tmp_path):
    import matplotlib.pyplot as plt

    import captioner

    adaptive = untrained_model_file(tmp_path / "adaptive.pt", "adaptive")
    soft = untrained_model_file(tmp_path / "soft.pt", "soft")
    for cap in (captioner.load(adaptive, device="cpu"), captioner.load([adaptive, soft], device="cpu"),
                captioner.load(adaptive, device="cpu", flip=True)):
        result = cap(_photo())
        assert result.tokens and len(result.looked) == len(result.tokens) == len(result.attention)
        np.testing.assert_allclose(result.attention.sum((1, 2)), result.looked, atol=1e-3)
        assert result.to_dict()["looked"] == result.looked
        fig = cap.figure(result)
        assert sum("1−β" in ax.get_title() for ax in fig.axes) == len(result.tokens)
        plt.close(fig)
    alone = captioner.load(soft, device="cpu")(_photo())
    assert alone.looked is None and "looked" not in alone.to_dict()


def _photo():
    from PIL import Image

    return Image.new("RGB", (64, 48), (90, 140, 60))


# -- trained on the synthetic shapes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth") / "data", n_train=600, n_val=20, n_test=60, seed=1)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """An adaptive model trained for 8 epochs (about 190 steps) on 600 images."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("synth_adaptive", ["train.max_epochs=8"])
    return load_model(train(cfg, synth, root / "adaptive", cache_root=root / "cache", progress=False)), root / "cache"


def test_spatial_attention_learns_above_shuffled_captions_in_a_few_seconds(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=200, n_val=10, n_test=40, seed=1)
    cfg = load_config("synth_spatial", ["train.max_epochs=3"])
    model = load_model(train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False))
    report = evaluate(model, data, "test", beam_size=3, cache_root=tmp_path / "cache", tokenizer="python",
                      metrics=("bleu", "cider"), progress=False)
    base = shuffled_baseline(report)
    assert report["metrics"]["BLEU-4"] >= base["BLEU-4"] + 0.04
    assert report["metrics"]["CIDEr-D"] >= 1.2 * base["CIDEr-D"]


@pytest.mark.slow
def test_adaptive_learns_far_above_shuffled_captions(trained, synth):
    model, cache = trained
    report = evaluate(model, synth, "test", beam_size=3, cache_root=cache, tokenizer="python",
                      metrics=("bleu", "cider"), progress=False)
    base = shuffled_baseline(report)
    bleu4, cider = report["metrics"]["BLEU-4"], report["metrics"]["CIDEr-D"]
    print(f"adaptive: BLEU-4 {bleu4:.3f} CIDEr-D {cider:.2f}; shuffled: {base['BLEU-4']:.3f} {base['CIDEr-D']:.2f}")
    assert bleu4 >= base["BLEU-4"] + 0.05
    assert cider >= 1.5 * base["CIDEr-D"]


@pytest.mark.slow
def test_the_sentinel_takes_function_words_and_the_image_nouns(trained, synth):
    """Lu et al.'s finding: beta_t is high for words the language model knows ("a", "the", "of"), low for
    words that name what is in the image (here "circle", "square", "triangle")."""
    model, cache = trained
    _, records, _, features = load_features(model.config, synth, cache, progress=False)
    rows = torch.tensor([features.index[r.name] for r in records if r.split == "test"])
    glob, grid = features.load_all()
    captions = Captioner(model).decode({"global": glob[rows], "grid": grid[rows]}, beam_size=1)
    beta = {"function": [], "noun": []}
    for caption in captions:
        assert caption.looked is not None and len(caption.looked) == len(caption.tokens)
        assert "looked" in caption.to_dict()
        for word, looked in zip(caption.tokens, caption.looked, strict=True):
            group = "function" if word in FUNCTION_WORDS else "noun" if word in NOUNS else None
            if group:
                beta[group].append(1 - looked)
    mean = {group: sum(v) / len(v) for group, v in beta.items()}
    print(f"mean beta_t: function words {mean['function']:.2f} ({len(beta['function'])}), "
          f"nouns {mean['noun']:.2f} ({len(beta['noun'])})")
    assert len(beta["noun"]) >= 60
    assert mean["function"] > mean["noun"] + 0.15


@pytest.mark.slow
def test_the_sentinel_study_ranks_function_words_above_nouns(trained, synth):
    """experiments/sentinel_words.py, teacher-forced on the references: the same finding, word by word."""
    import importlib.util
    from pathlib import Path

    from captioner.model_features import split_features

    path = Path(__file__).resolve().parents[1] / "experiments" / "sentinel_words.py"
    spec = importlib.util.spec_from_file_location("sentinel_words", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    model, cache = trained
    records, feats, _ = split_features(model, synth, "test", cache_root=cache, progress=False)
    by_word = study.sentinel_by_word(model, records, feats, batch_size=16)
    assert sum(map(len, by_word.values())) == sum(len(c) + 1 for r in records for c in r.captions)  # + <end>
    first = records[0]  # its first caption's values are the decoder's own, word by word
    one = {k: torch.as_tensor(v[:1]).float() for k, v in feats.items()}
    ids = torch.tensor([model.vocab.encode(first.captions[0])])
    expected = _sentinel_weight(model.decoder, one, ids)[0]
    assert by_word[model.vocab.itos[int(ids[0, 1])]][0] == pytest.approx(float(expected[0]), abs=1e-6)
    mean = {w: sum(v) / len(v) for w, v in by_word.items()}
    function, nouns = ([mean[w] for w in group & mean.keys()] for group in (FUNCTION_WORDS, NOUNS))
    assert len(nouns) == len(NOUNS) and sum(function) / len(function) > sum(nouns) / len(nouns) + 0.15


def test_a_stuck_sentinel_is_named_with_its_fix():
    from captioner.training.module import sentinel_warning

    assert "lower model.sentinel_start (now 10.8 nats" in sentinel_warning(1e-8, 10.8)
    assert "raise model.sentinel_start" in sentinel_warning(0.999, 0.0)
    assert sentinel_warning(0.79, 5.0) is None  # open: on Flickr8k it averaged about 0.8


def test_training_checks_the_sentinel_after_every_epoch(tmp_path, monkeypatch, caplog):
    import captioner.training.module as module

    seen = []
    monkeypatch.setattr(module, "sentinel_warning", lambda beta, start: seen.append((beta, start)) or "stuck")
    data = make_synth(tmp_path / "synth", n_train=64, n_val=8, n_test=8, seed=1)
    cfg = load_config("synth_adaptive", ["train.max_epochs=2", "train.early_stop_patience=5"])
    with caplog.at_level("WARNING", logger="captioner"):
        train(cfg, data, tmp_path / "run", cache_root=tmp_path / "cache", progress=False)
    assert len(seen) == 2 and all(0 < beta < 1 and start == 5.5 for beta, start in seen)
    assert [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()] == ["epoch 1: stuck", "epoch 2: stuck"]
