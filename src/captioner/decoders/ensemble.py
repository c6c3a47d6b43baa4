"""Several trained decoders decoding as one (test-time ensemble): the shared beam search sees one decoder.

At every step the members' word distributions are averaged: in probability (``mean="prob"``, the default), or
in log-probability and normalised again (``mean="logprob"``, the setting ``decode.ensemble_mean``). The
attention shown for a word is the members' mean map. Members must share the vocabulary; they may be of
different types (e.g. soft + hard + NIC). They read the same encoder features, or, with ``feature_groups``,
each its own encoder's: member i then reads the entries ``"{feature_groups[i]}.grid"`` (etc.) of the features
(``load_models`` of files on different encoders: an ensemble across encoders). ``mirrored[i]``: member i reads
the features of the mirrored image (test-time flip, ``decode.flip``), so its attention map is flipped back
before the maps are averaged.
"""

import math

import torch
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class EnsembleDecoder(Decoder):
    def __init__(self, members: list[Decoder], feature_groups: list[int] | None = None, mean: str = "prob",
                 mirrored: list[bool] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one decoder")
        if mean not in ("prob", "logprob"):
            raise ValueError(f"mean must be prob or logprob, not {mean!r}")
        if feature_groups is not None and len(feature_groups) != len(members):
            raise ValueError("feature_groups needs one entry per member")
        if mirrored is not None and len(mirrored) != len(members):
            raise ValueError("mirrored needs one entry per member")
        super().__init__(members[0].vocab_size, members[0].pad_id)
        self.members = nn.ModuleList(members)
        self.feature_groups = feature_groups
        self.has_attention = any(m.has_attention for m in members)
        self.has_sentinel = any(m.has_sentinel for m in members)
        self.mean = mean
        self.mirrored = mirrored or [False] * len(members)

    @staticmethod
    def _split(d: State, i: int) -> State:
        prefix = f"{i}."
        return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}

    @staticmethod
    def _join(parts: list[State]) -> State:
        return {f"{i}.{k}": v for i, part in enumerate(parts) for k, v in part.items()}

    def encode(self, feats: Features) -> State:
        if self.feature_groups is None:
            return self._join([m.encode(feats) for m in self.members])
        groups = zip(self.members, self.feature_groups, strict=True)
        return self._join([m.encode(self._split(feats, g)) for m, g in groups])

    def init_state(self, ctx: State) -> State:
        return self._join([m.init_state(self._split(ctx, i)) for i, m in enumerate(self.members)])

    def step(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor | None]:
        logps, states, alphas = [], [], []
        for i, m in enumerate(self.members):
            logp, s, alpha = m.step(self._split(ctx, i), self._split(state, i), prev)  # [B, V]
            logps.append(logp)
            states.append(s)
            if alpha is not None:
                alphas.append(_unmirror(alpha) if self.mirrored[i] else alpha)
        stacked = torch.stack(logps)  # [M, B, V]
        if self.mean == "prob":
            logp = torch.logsumexp(stacked, dim=0) - math.log(len(logps))  # log of the mean probability
        else:
            logp = torch.log_softmax(stacked.mean(0), dim=-1)  # the mean log-probability, normalised
        # the map shown: the mean of the maps on the first attending member's grid (across encoders, grids differ)
        alpha = torch.stack([a for a in alphas if a.shape == alphas[0].shape]).mean(0) if alphas else None
        return logp, self._join(states), alpha  # [B, V]

    def step_logits(self, ctx: State, state: State, prev: Tensor):
        return self.step(ctx, state, prev)  # log-probabilities are logits too (softmax gives them back)


def _unmirror(alpha: Tensor) -> Tensor:
    """An attention map over the square grid of a mirrored image, on the image's own grid: [B, L] -> [B, L]."""
    side = math.isqrt(alpha.size(-1))
    return alpha.view(-1, side, side).flip(-1).reshape(alpha.shape)  # [B, side, side] columns reversed
