"""Show, Attend and Tell with hard (stochastic) attention, Xu et al. 2015 section 4.1.

At each word the decoder samples ONE location s_t ~ Multinoulli(alpha_t) and uses z_t = a_{s_t}.
The sample is not differentiable, so training maximises the variational lower bound L_s with the
score-function (REINFORCE) estimator of its gradient (eqs. 10-12):

    dL_s/dW ~ d log p(y|s,a)/dW
              + lambda_r * (log p(y|s,a) - b) * d log p(s|a)/dW      (REINFORCE, moving-average baseline b)
              + lambda_e * dH[s]/dW                                   (entropy of alpha)

and, with probability 0.5 per caption, the sampled location is replaced by its expectation (the soft
context), as in the paper. Without the REINFORCE term the attention MLP would get no gradient at all
from sampled captions: a known failure of existing hard-attention code.

The reward is log p(y|s,a) per word (``reinforce_reward="word"``, the default, as in the authors' released
code) or of the whole caption (``"caption"``, eq. 11 as printed).

At decoding time the context is, by ``hard_inference``: the expected context sum_i alpha_i a_i (the default:
what the authors' released generate_caps.py decodes with, its sampling=False path), the grid cell at the argmax
of alpha, or a sampled cell.
"""

import torch
from torch import Tensor

from captioner.decoders.base import State
from captioner.decoders.soft import SoftAttentionDecoder, _entropy


class HardAttentionDecoder(SoftAttentionDecoder):
    def __init__(self, *args, reinforce_weight: float = 1.0, entropy_weight: float = 0.002,
                 baseline_decay: float = 0.9, expected_context_prob: float = 0.5,
                 hard_inference: str = "expected", reinforce_reward: str = "word", **kwargs):
        super().__init__(*args, **kwargs)
        self.reinforce_weight = reinforce_weight
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.expected_context_prob = expected_context_prob
        self.hard_inference = hard_inference
        self.reinforce_reward = reinforce_reward  # caption: log p(y|s,a); word: its mean per word
        self.register_buffer("baseline", torch.zeros(()))  # moving average of the reward
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))

    def encode(self, feats):
        ctx = super().encode(feats)
        batch = ctx["grid"].size(0)
        if self.training:  # which captions use the expected context instead of a sample
            ctx["flag_expected"] = torch.rand(batch, device=ctx["grid"].device) < self.expected_context_prob
        return ctx

    def context(self, ctx: State, alpha: Tensor, state: State) -> tuple[Tensor, State]:
        mode = "sample" if self.training else self.hard_inference
        if mode == "expected":
            return super().context(ctx, alpha, state)
        if mode == "sample":
            loc = torch.multinomial(alpha.detach().float(), 1).squeeze(1)  # [B]
        else:
            loc = alpha.argmax(dim=1)  # [B]
        grid = ctx["grid"]
        z = grid[torch.arange(grid.size(0), device=grid.device), loc]  # [B, C]
        if self.training:
            expected, _ = super().context(ctx, alpha, state)
            z = torch.where(ctx["flag_expected"].unsqueeze(1), expected, z)
        return z, {**state, "loc": loc}

    def choice_log_prob(self, ctx: State, state: State, alpha: Tensor | None) -> Tensor | None:
        """log alpha_t[s_t] of a sampled location (0 for captions given the expected context), so that SCST's
        reward reaches the attention too: sampled with no score-function term, it would get no gradient."""
        if not (self.training or self.hard_inference == "sample"):
            return None  # argmax or expected context: nothing was drawn
        log_p = torch.log(alpha.gather(1, state["loc"].unsqueeze(1)).squeeze(1).clamp(min=1e-12))  # [B]
        if "flag_expected" in ctx:
            log_p = torch.where(ctx["flag_expected"], torch.zeros_like(log_p), log_p)
        return log_p

    def extra_losses(self, out: dict, nll: Tensor, mask: Tensor, n_tokens: Tensor) -> dict[str, Tensor]:
        terms = super().extra_losses(out, nll, mask, n_tokens)
        if not self.training:
            return terms
        alphas, locs = out["alphas"], out["locs"]  # [B, T, L], [B, T]
        sampled = ~out["flag_expected"]  # [B] captions that used sampled locations
        log_p_s = torch.log(alphas.gather(2, locs.unsqueeze(2)).squeeze(2).clamp(min=1e-12))  # [B, T]
        log_p_s = (log_p_s * mask).sum(dim=1)  # [B]  log p(s|a)
        reward = -nll.detach().sum(dim=1)  # [B]  log p(y|s,a)
        if self.reinforce_reward == "word":
            reward = reward / mask.sum(dim=1).clamp(min=1)  # [B]  mean log-probability per word
        if sampled.any():
            self._update_baseline(reward[sampled].mean())
        advantage = (reward - self.baseline) * sampled  # [B]
        terms["reinforce"] = -self.reinforce_weight * (advantage * log_p_s).sum() / n_tokens
        entropy = _entropy(alphas, mask, n_tokens)
        terms["entropy_bonus"] = -self.entropy_weight * entropy
        terms["log_baseline"] = self.baseline.detach().clone()
        return terms

    @torch.no_grad()
    def _update_baseline(self, value: Tensor) -> None:
        if not self.baseline_ready:
            self.baseline.copy_(value)
            self.baseline_ready.fill_(True)
        else:
            self.baseline.mul_(self.baseline_decay).add_((1 - self.baseline_decay) * value)
