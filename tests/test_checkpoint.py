"""Model files: state_dict + vocab + config, weights_only loading, identical captions after a round trip."""

import pickle

import pytest
import torch

from captioner.checkpoint import load_model, save_model
from captioner.config import Config, ModelConfig
from captioner.data.vocab import Vocab
from captioner.decoding import beam_search
from captioner.errors import CaptionerError
from captioner.model import CaptionModel
from conftest import GLOBAL_DIM, GRID_DIM, random_captions, random_feats, small_decoder

WORDS = [["a", "red", "circle"], ["a", "blue", "square", "above", "a", "red", "circle"], ["green", "triangle"]]


def _model(kind: str, **overrides) -> CaptionModel:
    vocab = Vocab.build(WORDS * 3 + [[f"w{i}" for i in range(6)]])
    assert len(vocab) <= 20
    cfg = Config(model=ModelConfig(type=kind, embed_dim=16, hidden_dim=32, attention_dim=8, dropout=0.0, **overrides))
    dec = small_decoder(kind, **overrides)
    encoder = {"name": "tiny", "weights": "none", "input_size": 64, "grid_size": 3,
               "global_dim": GLOBAL_DIM, "grid_dim": GRID_DIM}
    # the test decoder has 20 output words; make the vocab match by padding with made-up words
    itos = vocab.itos + [f"x{i}" for i in range(20 - len(vocab))]
    vocab = Vocab.from_dict({**vocab.to_dict(), "itos": itos})
    return CaptionModel(dec.eval(), vocab, cfg, encoder, {"val/bleu4": 0.5})


def _captions(model: CaptionModel):
    hyps = beam_search(model.decoder, random_feats(5), model.vocab.start_id, model.vocab.end_id, beam_size=3)
    return [model.vocab.decode(h.tokens) for h in hyps]


@pytest.mark.parametrize("kind, overrides", [("nic", {}), ("soft", {}), ("hard", {}),
                                             ("soft", {"deep_output": False})])
def test_round_trip_gives_identical_captions(tmp_path, kind, overrides):
    model = _model(kind, **overrides)
    path = save_model(tmp_path / "model.pt", model)
    torch.load(path, weights_only=True)  # plain tensors and containers only
    loaded = load_model(path)
    assert loaded.vocab.itos == model.vocab.itos
    assert loaded.config == model.config
    assert loaded.metrics == {"val/bleu4": 0.5}
    assert _captions(loaded) == _captions(model)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_or_tampered_files_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "captioner-model/1", "payload": Evil()}, evil)
    with pytest.raises(CaptionerError, match="evil.pt"):
        load_model(evil)
    assert "must never run" not in capsys.readouterr().out
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CaptionerError, match="junk.pt"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CaptionerError, match="not a captioner model"):
        load_model(other)
    with pytest.raises(CaptionerError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CaptionerError, match="raw.pkl"):
        load_model(raw)


def test_state_dict_mismatch_is_a_clear_error(tmp_path):
    model = _model("soft")
    path = save_model(tmp_path / "model.pt", model)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["fc.weight"] = torch.zeros(3, 3)
    torch.save(obj, path)
    with pytest.raises(CaptionerError, match="does not match"):
        load_model(path)


def test_half_precision_export_is_smaller_and_close(tmp_path):
    model = _model("soft")
    full = save_model(tmp_path / "full.pt", model)
    half = save_model(tmp_path / "half.pt", model, half=True)
    assert half.stat().st_size < full.stat().st_size
    assert _captions(load_model(half)) == _captions(model)


def test_int8_weights_are_within_half_a_step_of_the_originals():
    from captioner.checkpoint import dequantize_int8, quantize_int8

    state = {"conv.weight": torch.randn(8, 4, 3, 3) * torch.logspace(-3, 1, 8).view(8, 1, 1, 1),
             "fc.weight": torch.randn(5, 7), "bn.bias": torch.randn(8), "bn.num_batches_tracked": torch.tensor(3),
             "depthwise.weight": torch.randn(8, 1, 3, 3), "stem.weight": torch.randn(8, 3, 3, 3)}
    q, scales = quantize_int8(state)
    assert q["conv.weight"].dtype == q["fc.weight"].dtype == torch.int8 and set(scales) == {"conv.weight", "fc.weight"}
    for k in ("bn.bias", "depthwise.weight", "stem.weight"):  # 1-D tensors, and filters of <= 3 input channels
        assert torch.equal(q[k], state[k]), k
    back = dequantize_int8(q, scales)
    for k in scales:  # one scale per output channel: small channels keep their precision
        step = scales[k].view(-1, *([1] * (state[k].dim() - 1)))
        assert bool(((back[k] - state[k]).abs() <= step / 2 + 1e-7).all()), k


def _ensemble(tmp_path) -> CaptionModel:
    from captioner.checkpoint import load_models

    torch.manual_seed(1)
    a, b = save_model(tmp_path / "a.pt", _model("soft")), save_model(tmp_path / "b.pt", _model("nic"))
    return load_models([a, b])


def test_an_ensemble_is_written_as_one_file_and_decodes_the_same(tmp_path):
    from captioner.checkpoint import MODEL_FORMAT_2, load_models
    from captioner.decoders.ensemble import EnsembleDecoder

    ensemble = _ensemble(tmp_path)
    path = save_model(tmp_path / "ens.pt", ensemble)
    assert torch.load(path, weights_only=True)["format"] == MODEL_FORMAT_2  # an older captioner refuses it
    loaded = load_model(path)
    assert isinstance(loaded.decoder, EnsembleDecoder) and len(loaded.decoder.members) == 2
    assert [c.model.type for c in loaded.member_configs] == ["soft", "nic"]
    assert loaded.kind == "ensemble of 2: soft + nic" and load_model(tmp_path / "a.pt").kind == "soft"
    assert _captions(loaded) == _captions(ensemble)
    # joined with one more model file, the ensemble file's members join one by one
    three = load_models([path, tmp_path / "a.pt"])
    assert len(three.decoder.members) == 3 and len(three.member_configs) == 3


def test_one_member_of_an_ensemble_file_decodes_as_its_own_model(tmp_path):
    """--member N (evaluate, caption, export): the Nth decoder alone, with the whole's decoding settings."""
    from captioner.cli import main

    ensemble = _ensemble(tmp_path)
    ensemble.config.decode.block_ngram = 3
    path = save_model(tmp_path / "ens.pt", ensemble)
    second = load_model(path).member(2)
    assert second.kind == "nic" and not second.member_configs and second.config.decode.block_ngram == 3
    assert _captions(second) == _captions(load_model(tmp_path / "b.pt"))
    with pytest.raises(CaptionerError, match="choose 1 to 2"):
        load_model(path).member(3)
    main(["export", str(path), str(tmp_path / "first.pt"), "--member", "1"])
    assert load_model(tmp_path / "first.pt").kind == "soft"
    assert _captions(load_model(tmp_path / "first.pt")) == _captions(load_model(tmp_path / "a.pt"))


def test_int8_decoders_give_nearly_the_same_word_probabilities(tmp_path):
    ensemble = _ensemble(tmp_path)
    full = save_model(tmp_path / "ens.pt", ensemble)
    small = save_model(tmp_path / "ens_int8.pt", ensemble, half=True, int8_decoder=True)
    assert small.stat().st_size < 0.5 * full.stat().st_size
    stored = torch.load(small, weights_only=True)["decoders"][0]["state_dict"]
    assert stored["fc.weight"].dtype == torch.int8
    loaded = load_model(small)
    feats = random_feats(4)
    with torch.no_grad():
        want = _first_step(ensemble.decoder, feats)
        got = _first_step(loaded.decoder, feats)
    torch.testing.assert_close(got.exp(), want.exp(), atol=0.01, rtol=0)


@pytest.mark.parametrize("kind", ["updown", "spatial", "adaptive", "transformer"])
def test_int8_storage_of_every_attention_decoder(tmp_path, kind):
    torch.manual_seed(0)
    model = _model(kind)
    loaded = load_model(save_model(tmp_path / "int8.pt", model, int8_decoder=True))
    feats, caps = random_feats(4), random_captions(4)
    with torch.no_grad():  # every word of a caption, not only the first: the state carries the rounding on
        probs = [m.decoder.teacher_forcing(feats, caps)["logits"].softmax(-1) for m in (loaded, model)]
    torch.testing.assert_close(*probs, atol=0.01, rtol=0)


def _first_step(decoder, feats):
    ctx = decoder.encode(feats)
    prev = torch.ones(feats["global"].shape[0], dtype=torch.long)  # [B], the start word
    return decoder.step(ctx, decoder.init_state(ctx), prev)[0]  # [B, V] log-probabilities


def test_a_newer_format_is_refused_with_a_clear_message(tmp_path):
    path = save_model(tmp_path / "model.pt", _model("soft"))
    obj = torch.load(path, weights_only=True)
    obj["format"] = "captioner-model/99"
    torch.save(obj, path)
    with pytest.raises(CaptionerError, match="newer model format"):
        load_model(path)


def test_files_of_the_earlier_int8_encoder_format_still_load(tmp_path):
    """captioner-model/1+int8-encoder (written by earlier versions) is read."""
    from captioner.checkpoint import MODEL_FORMAT_INT8, quantize_int8

    model = _model("soft")
    encoder_state = {"conv.weight": torch.randn(6, 4, 3, 3), "bn.bias": torch.randn(6)}
    obj = torch.load(save_model(tmp_path / "new.pt", model), weights_only=True)
    q, scales = quantize_int8(encoder_state)
    torch.save({**obj, "format": MODEL_FORMAT_INT8, "encoder_state_dict": q, "encoder_int8_scales": scales},
               tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    torch.testing.assert_close(loaded.encoder_state["conv.weight"], encoder_state["conv.weight"], atol=0.05, rtol=0)
    assert _captions(loaded) == _captions(model)
