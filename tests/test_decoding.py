"""Batched beam search: greedy equivalence, batch = per-image, never crashes."""

import pytest
import torch

from captioner.decoding import beam_search, beam_search_nbest, greedy_search
from conftest import random_feats, small_decoder

START, END = 1, 2


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "uniform", "updown", "transformer", "spatial", "adaptive"])
def test_beam_one_is_greedy(kind):
    dec = small_decoder(kind).eval()
    feats = random_feats(6)
    beam = beam_search(dec, feats, START, END, beam_size=1, max_len=12)
    greedy = greedy_search(dec, feats, START, END, max_len=12)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    for b, g in zip(beam, greedy, strict=True):
        assert b.score == pytest.approx(g.score, abs=1e-4)


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "uniform", "updown", "transformer", "spatial", "adaptive"])
@pytest.mark.parametrize("beam_size", [3, 5])
def test_batched_beam_equals_per_image(kind, beam_size):
    dec = small_decoder(kind).eval()
    feats = random_feats(7)
    batched = beam_search(dec, feats, START, END, beam_size=beam_size, max_len=12)
    for i, hyp in enumerate(batched):
        single = beam_search(dec, {k: v[i : i + 1] for k, v in feats.items()}, START, END,
                             beam_size=beam_size, max_len=12)[0]
        assert hyp.tokens == single.tokens
        assert hyp.score == pytest.approx(single.score, abs=1e-4)


@pytest.mark.parametrize("kind", ["nic", "soft", "hard"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_nbest_gives_all_beams_best_first(kind, length_penalty):
    dec = small_decoder(kind).eval()
    feats = random_feats(5)
    best = beam_search(dec, feats, START, END, beam_size=4, max_len=10, length_penalty=length_penalty)
    nbest = beam_search_nbest(dec, feats, START, END, beam_size=4, max_len=10, length_penalty=length_penalty)
    for one, beams in zip(best, nbest, strict=True):
        assert len(beams) == 4 and beams[0].tokens == one.tokens  # the first is beam_search's answer
        assert len({tuple(h.tokens) for h in beams}) == 4  # K different captions
        norm = [h.score / (len(h.tokens) + h.finished) ** length_penalty for h in beams]
        assert norm == sorted(norm, reverse=True)


def test_beam_never_worse_than_greedy_in_log_prob():
    dec = small_decoder("soft").eval()
    feats = random_feats(6)
    for g, b in zip(greedy_search(dec, feats, START, END, max_len=10),
                    beam_search(dec, feats, START, END, beam_size=5, max_len=10), strict=True):
        if g.finished and b.finished:
            assert b.score >= g.score - 1e-5


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "uniform", "updown", "transformer", "spatial", "adaptive"])
def test_no_beam_ends_still_returns_captions(kind):
    dec = small_decoder(kind).eval()
    with torch.no_grad():
        dec.fc.bias[END] = -1e4  # <end> is never chosen
    hyps = beam_search(dec, random_feats(3), START, END, beam_size=4, max_len=6)
    assert all(len(h.tokens) == 6 and not h.finished for h in hyps)
    if kind != "nic":
        assert all(h.alphas.shape == (6, 9) for h in hyps)


def test_captions_never_contain_pad_or_start():
    dec = small_decoder("nic").eval()
    with torch.no_grad():
        dec.fc.bias[0] = 50.0  # an untrained model that loves <pad>
        dec.fc.bias[START] = 40.0
    for h in beam_search(dec, random_feats(4), START, END, beam_size=3, max_len=5):
        assert 0 not in h.tokens and START not in h.tokens


def test_length_penalty_prefers_longer_captions():
    dec = small_decoder("soft").eval()
    feats = random_feats(10)
    plain = beam_search(dec, feats, START, END, beam_size=5, max_len=10, length_penalty=0.0)
    normed = beam_search(dec, feats, START, END, beam_size=5, max_len=10, length_penalty=1.0)
    assert sum(len(h.tokens) for h in normed) >= sum(len(h.tokens) for h in plain)


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_banned_words_are_never_generated(search):
    dec = small_decoder("soft").eval()
    feats = random_feats(6)
    with torch.no_grad():  # make word 5 overwhelmingly likely, then ban it
        dec.fc.bias[5] = 50.0
    run = (lambda **kw: beam_search(dec, feats, 1, 2, beam_size=3, max_len=8, **kw)) if search == "beam" \
        else (lambda **kw: greedy_search(dec, feats, 1, 2, max_len=8, **kw))
    assert all(5 in h.tokens for h in run())
    assert not any(5 in h.tokens for h in run(banned=(5,)))
