"""Self-critical sequence training: the CIDEr-D reward equals coco-caption's, sampled captions carry their
log-probabilities, and SCST after cross-entropy raises CIDEr-D on the synthetic data."""

import csv
import random
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from captioner.checkpoint import load_model
from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.decoding.sample import sample_captions
from captioner.encoders import create_encoder
from captioner.errors import CaptionerError
from captioner.metrics.bleu_reward import BleuReward, MixedReward
from captioner.metrics.cider_reward import CiderD
from captioner.training.train import train
from conftest import random_feats, small_decoder, untrained_model_file


def test_reward_equals_pycocoevalcap_ciderd():
    rng = random.Random(0)
    words = "a the dog man woman runs on in grass water red blue ball with two people street".split()
    refs = {f"i{i}": [[rng.choice(words) for _ in range(rng.randint(5, 12))] for _ in range(5)] for i in range(150)}
    cands = {k: [rng.choice(words) for _ in range(rng.randint(1, 12))] for k in refs}
    cands["i0"] = refs["i0"][0]  # one exact match
    ours = CiderD(refs).score(list(cands), list(cands.values()))
    mean, theirs = Cider().compute_score({k: [" ".join(r) for r in v] for k, v in refs.items()},
                                         {k: [" ".join(c)] for k, c in cands.items()})
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert ours.mean() == pytest.approx(mean)


def test_bleu_reward_equals_pycocoevalcap_per_image_bleu4():
    rng = random.Random(1)
    words = "a the dog man woman runs on in grass water red blue ball with two people street".split()
    refs = {f"i{i}": [[rng.choice(words) for _ in range(rng.randint(5, 12))] for _ in range(5)] for i in range(150)}
    cands = {k: [rng.choice(words) for _ in range(rng.randint(1, 14))] for k in refs}
    cands["i0"] = refs["i0"][0]  # one exact match: BLEU-4 1
    cands["i1"] = refs["i1"][1][:3]  # shorter than every reference: brevity penalty, no 4-gram
    ours = BleuReward(refs).score(list(cands), list(cands.values()))
    _, theirs = Bleu(4).compute_score({k: [" ".join(r) for r in v] for k, v in refs.items()},
                                      {k: [" ".join(c)] for k, c in cands.items()}, verbose=0)
    np.testing.assert_allclose(ours, theirs[3], rtol=0, atol=1e-12)
    assert ours[0] == pytest.approx(1.0) and ours.std() > 0.01


def test_mixed_reward_adds_weighted_bleu_to_cider():
    refs = {"a": [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "runs"]],
            "b": [["two", "people", "on", "a", "street"], ["people", "walk", "on", "the", "street"]]}
    caps = [["a", "dog", "runs", "on", "grass"], ["two", "people", "walk"]]
    cider, bleu = CiderD(refs), BleuReward(refs)
    mixed = MixedReward(cider, bleu, 2.0).score(["a", "b"], caps)
    np.testing.assert_allclose(mixed, cider.score(["a", "b"], caps) + 2.0 * bleu.score(["a", "b"], caps))


@pytest.mark.parametrize("kind", ["nic", "soft", "hard"])
def test_sampled_captions_carry_their_log_probability(kind):
    dec = small_decoder(kind).eval()  # no dropout; hard attention with its expected context
    feats = random_feats(3)
    words, logp_sum, lengths = sample_captions(dec, feats, 1, 2, n=4, max_len=9)
    assert words.shape[0] == 12 and logp_sum.shape == (12,) and logp_sum.requires_grad
    # the same captions scored by teacher forcing give the same log-probabilities
    caps = torch.cat([torch.full((12, 1), 1), words], dim=1)  # <start> + words (0-padded after <end>)
    rep = {k: v.repeat_interleave(4, dim=0) for k, v in feats.items()}
    logp = F.log_softmax(dec.teacher_forcing(rep, caps)["logits"].float(), dim=-1)  # [12, T, V]
    picked = logp.gather(2, words.unsqueeze(2)).squeeze(2) * (words != 0)
    torch.testing.assert_close(logp_sum, picked.sum(1), atol=1e-4, rtol=1e-4)
    assert torch.equal(lengths, (words != 0).sum(1))
    logp_sum.sum().backward()
    assert dec.fc.weight.grad is not None and dec.fc.weight.grad.abs().sum() > 0


def test_sampled_hard_attention_locations_join_the_score_function(monkeypatch):
    """SCST with hard attention sampling its locations (train mode): their log-probabilities join each caption's,
    so the reward reaches the attention MLP; at argmax locations (the test-time network) nothing is drawn."""
    dec = small_decoder("hard", expected_context_prob=0.0).train()  # every caption samples its locations
    feats = random_feats(3)
    torch.manual_seed(0)
    words, logp_sum, _ = sample_captions(dec, feats, 1, 2, n=4, max_len=9)
    logp_sum.sum().backward()
    assert dec.att_score.weight.grad.abs().sum() > 0  # the attention learns from the reward
    with monkeypatch.context() as m:  # the same draws without the locations' term: words only
        m.setattr(type(dec), "choice_log_prob", lambda *a: None)
        torch.manual_seed(0)
        same_words, words_only, _ = sample_captions(dec, feats, 1, 2, n=4, max_len=9)
    assert torch.equal(words, same_words)
    assert bool((logp_sum < words_only).all())  # plus log p(locations) < 0
    dec.zero_grad(set_to_none=True)
    dec.eval()
    dec.hard_inference = "argmax"
    _, logp_argmax, _ = sample_captions(dec, feats, 1, 2, n=4, max_len=9)
    logp_argmax.sum().backward()
    assert dec.att_score.weight.grad is None  # argmax locations: no path from the words to the attention
    dec.hard_inference = "expected"  # the expected context: differentiable in alpha, nothing drawn either
    _, logp_expected, _ = sample_captions(dec, feats, 1, 2, n=4, max_len=9)
    logp_expected.sum().backward()
    assert dec.att_score.weight.grad.abs().sum() > 0


def _epochs(path, key):
    values = defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                values[int(row["epoch"])].append(float(row[key]))
    return {e: sum(v) / len(v) for e, v in sorted(values.items())}


@pytest.fixture(scope="module")
def cross_entropy_model(tmp_path_factory):
    """A soft-attention model trained with cross-entropy on the synthetic shapes (selected on CIDEr-D)."""
    root = tmp_path_factory.mktemp("scst")
    data = make_synth(root / "synth", n_train=400, n_val=60, n_test=4, seed=3)
    model = train(load_config("synth_soft", ["train.max_epochs=10", "train.monitor=cider"]), data, root / "ce",
                  root / "cache", progress=False)
    best = max(_epochs(root / "ce" / "logs" / "metrics.csv", "val/cider").values())
    return data, root / "cache", model, best


@pytest.mark.slow
@pytest.mark.parametrize("baseline,dropout", [("greedy", True), ("mean", False)])
def test_scst_after_cross_entropy_raises_cider(cross_entropy_model, tmp_path, baseline, dropout):
    data, cache, ce, start_cider = cross_entropy_model
    scst = load_config("synth_soft", ["train.max_epochs=3", "train.scst=true", f"train.init_from={ce}",
                                      "train.lr=2e-4", "train.monitor=cider", "train.batch_size=32",
                                      f"train.scst_baseline={baseline}", f"train.scst_dropout={dropout}"])
    model = train(scst, data, tmp_path / "scst", cache, progress=False)
    log = tmp_path / "scst" / "logs" / "metrics.csv"
    after = max(_epochs(log, "val/cider").values())
    print(f"{baseline}: val CIDEr-D {start_cider:.3f} after cross-entropy, {after:.3f} after SCST; "
          f"train reward by epoch {_epochs(log, 'train/reward')}")
    assert after > start_cider + 0.1  # (about 4.0 -> 4.4 when this test was written)
    assert load_model(model).vocab == load_model(ce).vocab  # SCST keeps the start model's vocabulary


@pytest.mark.parametrize("config,overrides,problem", [
    ("synth_nic", [], "is a soft model on tiny features; this config trains nic on tiny"),
    ("synth_soft", ["encoder.grid_size=2"], "was trained on encoder features with layer=None, input_size=64, "
                                            "grid_size=4; this config gives layer=None, input_size=64, grid_size=2"),
    ("synth_soft", ["encoder.input_size=32"], "input_size=64, grid_size=4; this config gives layer=None, "
                                              "input_size=32, grid_size=4"),
])
def test_init_from_must_match_the_features(tmp_path, config, overrides, problem):
    """A start model trained on other features is refused in one line naming it, before any features are made:
    an attention decoder would otherwise take a grid of another size without complaint."""
    start = untrained_model_file(tmp_path / "start.pt")
    data = make_synth(tmp_path / "synth", n_train=8, n_val=4, n_test=0, size=32)
    cfg = load_config(config, [f"train.init_from={start}", *overrides])
    with pytest.raises(CaptionerError) as e:
        train(cfg, data, tmp_path / "run", tmp_path / "cache", progress=False)
    assert str(e.value).startswith(f"{start}: ") and problem in str(e.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_init_from_an_ensemble_file_is_refused(tmp_path):
    from captioner.checkpoint import load_models, save_model

    start = untrained_model_file(tmp_path / "start.pt")
    both = save_model(tmp_path / "both.pt", load_models([start, start]))
    data = make_synth(tmp_path / "synth", n_train=8, n_val=4, n_test=0, size=32)
    with pytest.raises(CaptionerError, match="holds an ensemble of 2 decoders"):
        train(load_config("synth_soft", [f"train.init_from={both}"]), data, tmp_path / "run", tmp_path / "cache",
              progress=False)


def test_init_from_a_model_on_other_encoder_weights_is_warned(tmp_path, caplog):
    """Same encoder, other weights (or its own fine-tuned ones): allowed, since that can be intended, but said."""
    from captioner.training.train import _check_start_features

    start = load_model(untrained_model_file(tmp_path / "start.pt"))
    ours = dict(start.encoder)
    with caplog.at_level("WARNING", logger="captioner"):
        _check_start_features(start, ours, "start.pt")
        assert not caplog.records
        _check_start_features(start, {**ours, "weights": "tuned.pth"}, "start.pt")
        start.encoder_state = {"stem.weight": torch.zeros(1)}
        _check_start_features(start, ours, "start.pt")
        # the weights it carries are this run's (recipes/after_finetune.sh saves them as the run's weights file;
        # stored in float16 in the model, read back as float32): nothing to say
        own = create_encoder("tiny", weights="none").state_dict()
        start.encoder_state = {k: v.half().float() if v.is_floating_point() else v for k, v in own.items()}
        n_before = len(caplog.records)
        _check_start_features(start, ours, "start.pt", {k: v.clone() for k, v in start.encoder_state.items()})
        assert len(caplog.records) == n_before
        _check_start_features(start, ours, "start.pt", {k: v + 1 for k, v in own.items()})  # other weights
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"start.pt: its decoder learned on features of encoder weights {ours['weights']}",
        "start.pt: its decoder learned on features of the encoder weights it carries",
        "start.pt: its decoder learned on features of the encoder weights it carries"]
