"""The benchmark yardstick computes exactly what captioner computes, on the same weights."""

import torch
from reference_soft import reference_loss

from captioner.config import ModelConfig
from captioner.decoders import build_decoder


def test_reference_loss_equals_ours():
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(type="soft", embed_dim=32, hidden_dim=48, attention_dim=24, dropout=0.0),
                        50, 10, 16).eval()
    grid = torch.randn(6, 9, 16)
    caps = torch.randint(4, 50, (6, 9))
    caps[:, 0], caps[:, -1] = 1, 2
    caps[2, 5], caps[2, 6:] = 2, 0
    ours = dec.loss({"grid": grid, "global": grid.mean(1)}, caps)
    torch.testing.assert_close(reference_loss(dec, grid, caps), ours["nll"] + ours["alpha_reg"])
