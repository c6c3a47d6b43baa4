"""Several trained decoders decoding as one (test-time ensemble): the shared beam search sees one decoder.

At every step the members' word distributions are averaged (in probability, not log-probability); the
attention shown for a word is the members' mean map. Members must share the vocabulary; they may be of
different types (e.g. soft + hard + NIC). They read the same encoder features, or, with ``feature_groups``,
each its own encoder's: member i then reads the entries ``"{feature_groups[i]}.grid"`` (etc.) of the features
(``load_models`` of files on different encoders: an ensemble across encoders).
"""

import math

import torch
from torch import Tensor, nn

from captioner.decoders.base import Decoder, Features, State


class EnsembleDecoder(Decoder):
    def __init__(self, members: list[Decoder], feature_groups: list[int] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one decoder")
        if feature_groups is not None and len(feature_groups) != len(members):
            raise ValueError("feature_groups needs one entry per member")
        super().__init__(members[0].vocab_size, members[0].pad_id)
        self.members = nn.ModuleList(members)
        self.feature_groups = feature_groups
        self.has_attention = any(m.has_attention for m in members)

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
                alphas.append(alpha)
        mean = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))  # log of the mean probability
        # the map shown: the mean of the maps on the first attending member's grid (across encoders, grids differ)
        alpha = torch.stack([a for a in alphas if a.shape == alphas[0].shape]).mean(0) if alphas else None
        return mean, self._join(states), alpha

    def step_logits(self, ctx: State, state: State, prev: Tensor):
        return self.step(ctx, state, prev)  # log-probabilities are logits too (softmax gives them back)
