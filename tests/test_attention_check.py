"""experiments/attention_check.py: the tampered attention maps are what the decoder really uses."""

import importlib.util
from pathlib import Path

import pytest
import torch

from captioner.decoding import beam_search
from conftest import LOCATIONS, random_feats, small_decoder

pytestmark = pytest.mark.slow  # the tests of an experiments/ study

_spec = importlib.util.spec_from_file_location(
    "attention_check", Path(__file__).resolve().parents[1] / "experiments" / "attention_check.py")
attention_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attention_check)


def _decode(decoder, feats):
    return beam_search(decoder, feats, start_id=1, end_id=2, beam_size=1, max_len=5)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_shuffled_maps_are_the_learned_maps_moved_elsewhere(kind):
    decoder = small_decoder(kind).eval()
    feats = random_feats(3)
    ctx = decoder.encode(feats)
    h = decoder.init_state(ctx)["h"]
    learned = decoder.attend(ctx, h)  # [B, L]
    attention_check.tamper(decoder, "shuffled", LOCATIONS)
    shuffled = decoder.attend(ctx, h)
    assert torch.allclose(shuffled.sort(dim=1).values, learned.sort(dim=1).values)  # as sharp as before
    assert not torch.allclose(shuffled, learned)  # but pointing elsewhere
    hyps = _decode(decoder, feats)  # the beam search sees the shuffled maps
    first = torch.stack([hyp.alphas[0] for hyp in hyps])
    assert torch.allclose(first, shuffled, atol=1e-5)


def test_uniform_maps_give_the_mean_pooled_context():
    soft, hard = small_decoder("soft").eval(), small_decoder("hard", hard_inference="argmax").eval()
    for decoder in (soft, hard):
        attention_check.tamper(decoder, "uniform", LOCATIONS)
        hyps = _decode(decoder, random_feats(2))
        alphas = torch.cat([hyp.alphas for hyp in hyps])
        assert torch.allclose(alphas, torch.full_like(alphas, 1 / LOCATIONS))
    assert hard.hard_inference == "expected"  # not the argmax of a flat map (always location 0)
