"""The no-attention ablation: soft attention's decoder with the attention weights fixed to uniform.

Every word sees the mean annotation vector (mean-pooled context), whatever the state; everything else (LSTM,
gating scalar, deep output) is the soft-attention model's. If soft or hard attention do not beat this model,
their attention has not learned anything useful. Its attention entropy is log L at every word.
"""

import torch
from torch import Tensor

from captioner.decoders.base import Features, State
from captioner.decoders.soft import SoftAttentionDecoder


class UniformAttentionDecoder(SoftAttentionDecoder):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha_c = 0.0  # coverage is constant under uniform weights: the regulariser has nothing to do

    def encode(self, feats: Features) -> State:
        return {"grid": feats["grid"]}  # [B, L, C]; no attention projection needed

    def _attend(self, ctx: State, att_h: Tensor) -> Tensor:
        b, n_loc = ctx["grid"].shape[:2]
        return torch.full((b, n_loc), 1.0 / n_loc, dtype=att_h.dtype, device=att_h.device)  # [B, L]
