"""Training and decoding techniques: label smoothing, scheduled sampling, GloVe vectors, ensembles, n-gram blocking
and the repetition penalty."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from captioner.checkpoint import load_model, load_models, save_model
from captioner.config import Config, ModelConfig, TrainConfig, with_decode_settings
from captioner.data.glove import init_embedding, load_glove
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.decoders.ensemble import EnsembleDecoder
from captioner.decoding import beam_search
from captioner.errors import CaptionerError
from captioner.model import CaptionModel, with_settings
from captioner.training.module import CaptionModule
from conftest import VOCAB, random_captions, random_feats, small_decoder, untrained_model_file


@pytest.mark.parametrize("kind", ["nic", "soft", "hard"])
def test_label_smoothing_changes_the_objective_not_the_logged_nll(kind):
    dec = small_decoder(kind).eval()  # eval: hard attention's expected context, no sampling
    feats, caps = random_feats(3), random_captions(3)
    plain = dec.loss(feats, caps)
    smooth = dec.loss(feats, caps, label_smoothing=0.1)
    assert torch.allclose(smooth["log_nll"], plain["nll"])
    logp = F.log_softmax(dec.teacher_forcing(feats, caps)["logits"].float(), dim=-1)  # [B, T, V]
    mask = caps[:, 1:] != 0
    by_hand = -(0.9 * logp.gather(2, caps[:, 1:].unsqueeze(2)).squeeze(2) + 0.1 * logp.mean(2))
    assert torch.allclose(smooth["smoothed_nll"], (by_hand * mask).sum() / mask.sum(), atol=1e-5)


@pytest.mark.parametrize("kind", ["nic", "soft", "hard"])
def test_scheduled_sampling_feeds_the_model_its_own_words(kind):
    dec = small_decoder(kind).eval()  # dropout 0
    feats, caps = random_feats(4), random_captions(4, length=8)
    other = caps.clone()
    other[:, 1:-1] = torch.randint(4, VOCAB, other[:, 1:-1].shape)  # different reference words after <start>

    def logits(c, p):
        torch.manual_seed(5)
        return dec.teacher_forcing(feats, c, sample_prob=p)["logits"]

    assert torch.equal(logits(caps, 1.0), logits(other, 1.0))  # the inputs are the model's own samples
    assert not torch.allclose(logits(caps, 0.0), logits(other, 0.0))  # teacher forcing reads the references
    assert torch.allclose(logits(caps, 0.0)[:, 0], logits(other, 0.0)[:, 0])  # first word: <start> in both


def test_scheduled_sampling_probability_ramps_up():
    cfg = Config(train=TrainConfig(ss_max=0.25, ss_start=2, ss_ramp=4))
    probs = [CaptionModule.sample_prob(SimpleNamespace(cfg=cfg, current_epoch=e)) for e in range(8)]
    assert probs == [0.0, 0.0, 0.0625, 0.125, 0.1875, 0.25, 0.25, 0.25]
    off = Config()
    assert CaptionModule.sample_prob(SimpleNamespace(cfg=off, current_epoch=9)) == 0.0


def test_glove_text_file_fills_the_embedding(tmp_path):
    vocab = Vocab.build([["a", "dog", "runs"], ["a", "cat"]])
    glove = tmp_path / "tiny.glove.txt"
    glove.write_text("dog 1 2 3 4\nzebra 9 9 9 9\ncat 0.5 0.5 0.5 0.5\n\n")
    vectors, found = load_glove(glove, vocab, 4)
    assert found.tolist() == [w in ("dog", "cat") for w in vocab.itos]
    assert vectors[vocab.stoi["dog"]].tolist() == [1, 2, 3, 4]
    emb = torch.nn.Embedding(len(vocab), 4)
    before = emb.weight[vocab.stoi["a"]].clone()
    assert init_embedding(emb, glove, vocab, freeze=True) == 2
    assert emb.weight[vocab.stoi["cat"]].tolist() == [0.5] * 4
    assert torch.equal(emb.weight[vocab.stoi["a"]], before) and not emb.weight.requires_grad
    fasttext = tmp_path / "vectors.vec"
    fasttext.write_text("2 4\ndog 1 2 3 4\ncat 1 1 1 1\n")
    assert load_glove(fasttext, vocab, 4)[1].sum() == 2


@pytest.mark.parametrize("content, message", [
    ("dog 1 2 3\n", "line 1: 3 numbers, expected 4"),
    ("dog 1 2 x 4\n", "line 1: not a number"),
    (b"dog 1 2 3 4\ncaf\xe9 1 1 1 1\n", "not UTF-8"),
    ("zebra 1 2 3 4\n", "none of the vocabulary's words"),
])
def test_bad_glove_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    vocab = Vocab.build([["a", "dog"]])
    with pytest.raises(CaptionerError, match=message):
        init_embedding(torch.nn.Embedding(len(vocab), 4), path, vocab, freeze=False)
    with pytest.raises(CaptionerError, match="no such word-vector file"):
        load_glove(tmp_path / "missing.txt", vocab, 4)


def test_ensemble_averages_probabilities_and_decodes_in_the_shared_beam_search():
    a, b = small_decoder("soft").eval(), small_decoder("hard").eval()
    feats = random_feats(3)
    ens = EnsembleDecoder([a, b]).eval()
    ctx, prev = ens.encode(feats), torch.full((3,), 1)
    logp, _, alpha = ens.step(ctx, ens.init_state(ctx), prev)
    la, _, aa = a.step(a.encode(feats), a.init_state(a.encode(feats)), prev)
    lb, _, ab = b.step(b.encode(feats), b.init_state(b.encode(feats)), prev)
    assert torch.allclose(logp.exp(), (la.exp() + lb.exp()) / 2, atol=1e-6)
    assert torch.allclose(alpha, (aa + ab) / 2)
    # an ensemble of one model decodes exactly as that model
    solo = beam_search(EnsembleDecoder([a]), feats, 1, 2, beam_size=3, max_len=8)
    assert [h.tokens for h in solo] == [h.tokens for h in beam_search(a, feats, 1, 2, beam_size=3, max_len=8)]
    assert len(beam_search(ens, feats, 1, 2, beam_size=3, max_len=8)) == 3


def test_ensemble_members_can_read_features_of_different_encoders():
    """feature_groups: member i reads its own encoder's features (entries "{group}.grid", "{group}.global")."""
    a = small_decoder("soft").eval()
    c = build_decoder(ModelConfig(type="soft", embed_dim=16, hidden_dim=32, attention_dim=8, dropout=0.0),
                      VOCAB, 24, 20).eval()  # another encoder: other dims, a 3x3 grid
    gen = torch.Generator().manual_seed(1)
    other = {"global": torch.randn(3, 24, generator=gen), "grid": torch.randn(3, 9, 20, generator=gen)}
    feats = random_feats(3)
    routed = {**{f"0.{k}": v for k, v in feats.items()}, **{f"1.{k}": v for k, v in other.items()}}
    ens = EnsembleDecoder([a, c], feature_groups=[0, 1]).eval()
    ctx, prev = ens.encode(routed), torch.full((3,), 1)
    logp, _, _ = ens.step(ctx, ens.init_state(ctx), prev)
    la, _, _ = a.step(a.encode(feats), a.init_state(a.encode(feats)), prev)
    lc, _, _ = c.step(c.encode(other), c.init_state(c.encode(other)), prev)
    assert torch.allclose(logp.exp(), (la.exp() + lc.exp()) / 2, atol=1e-6)
    solo = beam_search(EnsembleDecoder([c], feature_groups=[1]), routed, 1, 2, beam_size=3, max_len=8)
    assert [h.tokens for h in solo] == [h.tokens for h in beam_search(c, other, 1, 2, beam_size=3, max_len=8)]
    assert len(beam_search(ens, routed, 1, 2, beam_size=3, max_len=8)) == 3
    with pytest.raises(ValueError, match="one entry per member"):
        EnsembleDecoder([a, c], feature_groups=[0])


def test_ensemble_can_average_log_probabilities_set_by_decode_ensemble_mean(tmp_path):
    a, b = small_decoder("soft").eval(), small_decoder("nic").eval()
    feats = random_feats(3)
    ens = EnsembleDecoder([a, b], mean="logprob").eval()
    ctx, prev = ens.encode(feats), torch.full((3,), 1)
    logp, _, _ = ens.step(ctx, ens.init_state(ctx), prev)
    la, _, _ = a.step(a.encode(feats), a.init_state(a.encode(feats)), prev)
    lb, _, _ = b.step(b.encode(feats), b.init_state(b.encode(feats)), prev)
    assert torch.allclose(logp, F.log_softmax((la + lb) / 2, dim=-1), atol=1e-6)
    assert not torch.allclose(logp.exp(), (la.exp() + lb.exp()) / 2, atol=1e-4)  # not the mean probability
    with pytest.raises(ValueError, match="prob or logprob"):
        EnsembleDecoder([a], mean="max")
    # the setting reaches an ensemble of files, by --set and from the first file's config
    files = [untrained_model_file(tmp_path / "soft.pt", "soft"), untrained_model_file(tmp_path / "nic.pt", "nic")]
    model = load_models(files)
    assert model.decoder.mean == "prob"
    assert with_settings(model, ["decode.ensemble_mean=logprob"]).decoder.mean == "logprob"
    with pytest.raises(CaptionerError, match="decode.ensemble_mean must be prob or logprob"):
        with_settings(model, ["decode.ensemble_mean=max"])
    first = load_model(files[0])
    first.config = with_decode_settings(first.config, ["decode.ensemble_mean=logprob"])
    assert load_models([save_model(tmp_path / "first.pt", first), files[1]]).decoder.mean == "logprob"


def test_load_models_joins_compatible_files_and_refuses_others(tmp_path):
    soft = untrained_model_file(tmp_path / "soft.pt", "soft")
    nic = untrained_model_file(tmp_path / "nic.pt", "nic")
    ens = load_models([soft, nic])
    assert isinstance(ens.decoder, EnsembleDecoder) and ens.decoder.has_attention
    assert load_models([soft]).decoder.__class__.__name__ == "SoftAttentionDecoder"
    other = load_model(nic)
    words = Vocab.build([["six", "other", "words", "of", "the", "same"]])  # same size, other words
    other = CaptionModel(other.decoder, words, other.config, other.encoder)
    with pytest.raises(CaptionerError, match="different vocabularies"):
        load_models([soft, save_model(tmp_path / "other.pt", other)])


def _repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_ngram_blocking_and_repetition_penalty():
    dec = small_decoder("soft").eval()
    with torch.no_grad():
        dec.fc.bias[2] -= 20.0  # an untrained model that never ends: long captions full of repeats
    feats = random_feats(6)
    plain = beam_search(dec, feats, 1, 2, beam_size=3, max_len=14)
    assert any(_repeats(h.tokens, 3) for h in plain)
    blocked = beam_search(dec, feats, 1, 2, beam_size=3, max_len=14, block_ngram=3)
    assert not any(_repeats(h.tokens, 3) for h in blocked)
    assert all(len(h.tokens) == 14 for h in blocked)
    # batched = one image at a time, with blocking too
    for i, h in enumerate(blocked):
        one = beam_search(dec, {k: v[i : i + 1] for k, v in feats.items()}, 1, 2, beam_size=3, max_len=14,
                          block_ngram=3)
        assert one[0].tokens == h.tokens
    penalised = beam_search(dec, feats, 1, 2, beam_size=3, max_len=10, repetition_penalty=100.0)
    assert not any(_repeats(h.tokens, 1) for h in penalised)  # 16 usable words: no word twice in 10


def test_training_starts_from_glove_vectors_and_can_keep_them_frozen(tmp_path):
    from captioner.config import load_config
    from captioner.data.synth import make_synth
    from captioner.training.train import train

    data = make_synth(tmp_path / "synth", n_train=20, n_val=4, n_test=2, size=32)
    glove = tmp_path / "vectors.txt"
    glove.write_text("red 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\ncircle 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
    sets = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
            "train.max_epochs=1", f"model.glove={glove}", "model.freeze_embeddings=true",
            "train.label_smoothing=0.1", "train.ss_max=0.5"]
    model = load_model(train(load_config("synth_soft", sets), data, tmp_path / "run", tmp_path / "cache",
                             progress=False))
    emb = model.decoder.embed.weight
    assert emb[model.vocab.stoi["red"]].tolist() == [1.0] + [0.0] * 15
    assert emb[model.vocab.stoi["circle"]].tolist() == [0.0, 1.0] + [0.0] * 14
