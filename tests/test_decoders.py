"""Decoders: input/target alignment, losses, and the hard-attention gradient."""

import pytest
import torch

from conftest import random_captions, random_feats, small_decoder


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "uniform", "updown", "transformer", "spatial", "adaptive"])
def test_output_t_predicts_word_t_plus_1_from_word_t(kind):
    """logits[:, t] is the prediction of captions[:, t+1]: it sees word t, and never a later word."""
    dec = small_decoder(kind).eval()
    feats, caps = random_feats(2), random_captions(2, length=8)
    base = dec.teacher_forcing(feats, caps)["logits"]  # [B, 7, V]
    for t in range(1, 7):
        changed = caps.clone()
        changed[:, t] = (changed[:, t] - 4 + 1) % 16 + 4  # another real word
        logits = dec.teacher_forcing(feats, changed)["logits"]
        assert torch.equal(logits[:, :t], base[:, :t]), "an output saw a word it has to predict"
        assert not torch.allclose(logits[:, t], base[:, t]), "output t does not depend on word t"


def test_nic_sees_the_image_before_start():
    dec = small_decoder("nic").eval()
    caps = random_captions(2)
    a = dec.teacher_forcing(random_feats(2, seed=0), caps)["logits"]
    b = dec.teacher_forcing(random_feats(2, seed=1), caps)["logits"]
    assert not torch.allclose(a[:, 0], b[:, 0])  # the first word already depends on the image


PLAIN = {"deep_output": False}  # attention models with the tutorial's output layer, logits = L_o h_t


@pytest.mark.parametrize("kind, overrides", [("nic", {}), ("soft", {}), ("hard", {}), ("uniform", {}), ("updown", {}),
                                             ("transformer", {}), ("spatial", {}), ("adaptive", {}),
                                             ("soft", PLAIN), ("hard", PLAIN)])
def test_teacher_forcing_equals_stepping(kind, overrides):
    dec = small_decoder(kind, **overrides).eval()
    if overrides == PLAIN:
        assert not hasattr(dec, "out_hidden") and dec.fc.in_features == 32  # hidden_dim, not embed_dim
    feats, caps = random_feats(3), random_captions(3)
    logits = dec.teacher_forcing(feats, caps)["logits"]
    ctx = dec.encode(feats)
    state = dec.init_state(ctx)
    for t in range(caps.size(1) - 1):
        logp, state, _ = dec.step(ctx, state, caps[:, t])
        torch.testing.assert_close(logp, torch.log_softmax(logits[:, t], -1))
        if overrides == PLAIN:
            torch.testing.assert_close(dec.fc(state["h"]), logits[:, t])


@pytest.mark.parametrize("deep_output", [True, False])
@pytest.mark.parametrize("kind", ["soft", "hard", "uniform"])
def test_fast_teacher_forcing_has_the_same_gradients(kind, deep_output):
    """The restructured loop (fused products, deferred weight gradients) = the plain per-step loop."""
    from captioner.decoders.base import Decoder

    dec = small_decoder(kind, deep_output=deep_output).eval()  # eval: no dropout, hard: expected context
    feats, caps = random_feats(3), random_captions(3)

    def grads(teacher_forcing):
        dec.zero_grad()
        out = teacher_forcing(dec, feats, caps)
        (out["logits"].square().mean() + out["alphas"].square().mean()).backward()
        return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in dec.named_parameters()}

    fast, plain = grads(type(dec).teacher_forcing), grads(Decoder.teacher_forcing)
    assert plain["lstm.weight_hh"].abs().sum() > 0
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["soft", "hard", "uniform", "spatial", "adaptive"])
def test_decoding_step_equals_training_step(kind):
    """Without autograd the step uses cached weight products (decoding); with it, nn.LSTMCell: same numbers."""
    dec = small_decoder(kind).eval()
    feats, caps = random_feats(3), random_captions(3)
    ctx = dec.encode(feats)
    state_a = state_b = dec.init_state(ctx)
    for t in range(caps.size(1) - 1):
        logp_a, state_a, _ = dec.step(ctx, state_a, caps[:, t])
        with torch.no_grad():
            logp_b, state_b, _ = dec.step(ctx, state_b, caps[:, t])
        torch.testing.assert_close(logp_a, logp_b)
    with torch.no_grad():  # the cache follows the weights: change one and the step changes
        before, _, _ = dec.step(ctx, dec.init_state(ctx), caps[:, 0])
        dec.embed.weight.mul_(2.0)
        after, _, _ = dec.step(ctx, dec.init_state(ctx), caps[:, 0])
    assert not torch.allclose(before, after)


def test_loss_ignores_padding():
    dec = small_decoder("soft").eval()
    feats, caps = random_feats(2), random_captions(2, length=8)
    caps[1, 4] = 2
    caps[1, 5:] = 0
    loss_a = dec.loss(feats, caps)["nll"]
    caps2 = caps.clone()
    caps2[1, 5:] = 0  # same padding, differently sized batch tensor
    loss_b = dec.loss(feats, torch.cat([caps2, torch.zeros(2, 3, dtype=torch.long)], 1))["nll"]
    torch.testing.assert_close(loss_a, loss_b)


def _attention_grad(dec):
    dec.train()
    dec.zero_grad()
    dec.loss(random_feats(8), random_captions(8))["loss"].backward()
    params = [dec.att_score.weight, dec.att_feat.weight, dec.att_hidden.weight]
    return sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in params)


def test_hard_attention_gets_gradient_from_reinforce():
    # every caption uses sampled locations, no regulariser: only the score-function term can reach alpha
    dec = small_decoder("hard", expected_context_prob=0.0, alpha_c=0.0, entropy_weight=0.0, reinforce_weight=1.0)
    assert _attention_grad(dec) > 0
    dead = small_decoder("hard", expected_context_prob=0.0, alpha_c=0.0, entropy_weight=0.0, reinforce_weight=0.0)
    assert _attention_grad(dead) == 0.0  # the known failure of hard attention without REINFORCE


def test_hard_attention_entropy_term_and_baseline():
    dec = small_decoder("hard", expected_context_prob=0.0, alpha_c=0.0, entropy_weight=0.1, reinforce_weight=0.0)
    assert _attention_grad(dec) > 0
    first = float(dec.baseline)
    assert first < 0  # log p(y|s) of an untrained model
    dec.loss(random_feats(8, seed=3), random_captions(8, seed=3))
    assert float(dec.baseline) != first  # moving average moved


@pytest.mark.parametrize("reward, ratio", [("caption", (1.6, 2.4)), ("word", (0.8, 1.2))])
def test_hard_attention_reward_per_caption_or_per_word(reward, ratio):
    """The baseline's first value is the mean reward: with the whole caption's log-likelihood it about
    doubles when the captions are twice as long; per word (Xu et al.'s code) it stays put."""
    baselines = []
    for length in (7, 14):
        dec = small_decoder("hard", expected_context_prob=0.0, reinforce_reward=reward).train()
        dec.loss(random_feats(16), random_captions(16, length=length))
        baselines.append(float(dec.baseline))
    assert ratio[0] < baselines[1] / baselines[0] < ratio[1]


def test_hard_attention_uses_one_location_at_inference_with_argmax():
    dec = small_decoder("hard", hard_inference="argmax").eval()
    feats = random_feats(2)
    ctx = dec.encode(feats)
    state = dec.init_state(ctx)
    _, state, alpha = dec.step(ctx, state, torch.tensor([1, 1]))
    assert torch.equal(state["loc"], alpha.argmax(1))


def test_hard_attention_decodes_with_the_expected_context_by_default():
    """The default (Xu et al.'s generate_caps.py): at decoding time z_t = sum_i alpha_ti a_i, so a hard decoder
    steps exactly as a soft decoder with the same weights; with argmax it takes one cell instead."""
    torch.manual_seed(0)
    hard = small_decoder("hard").eval()
    soft = small_decoder("soft").eval()
    soft.load_state_dict({k: v for k, v in hard.state_dict().items() if k in soft.state_dict()})
    feats, words = random_feats(2), torch.tensor([1, 1])
    outs = []
    for dec in (hard, soft):
        ctx = dec.encode(feats)
        logits, state, alpha = dec.step(ctx, dec.init_state(ctx), words)
        outs.append((logits, alpha, state))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert "loc" not in outs[0][2]
    hard.hard_inference = "argmax"
    ctx = hard.encode(feats)
    argmax_logits, _, _ = hard.step(ctx, hard.init_state(ctx), words)
    assert not torch.allclose(argmax_logits, outs[0][0])


def test_uniform_attention_is_uniform_and_has_no_attention_gradient():
    dec = small_decoder("uniform").train()
    feats, caps = random_feats(3), random_captions(3)
    terms = dec.loss(feats, caps)
    alphas = dec.teacher_forcing(feats, caps)["alphas"]  # [B, T, L]
    torch.testing.assert_close(alphas, torch.full_like(alphas, 1.0 / alphas.size(2)))
    terms["loss"].backward()
    assert dec.att_score.weight.grad is None or not dec.att_score.weight.grad.any()
    assert dec.lstm.weight_hh.grad.abs().sum() > 0  # the rest of the model learns
