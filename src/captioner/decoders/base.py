"""The per-step interface every decoder serves, and the teacher-forced loss built on it.

Decoding (beam search, greedy) and training both go through the same three calls, so what the model
is trained to do is exactly what it does when it captions:

    ctx   = decoder.encode(feats)                  # per-image tensors computed once (e.g. attention projections)
    state = decoder.init_state(ctx)                # recurrent state before the first word
    logp, state, alpha = decoder.step(ctx, state, prev_tokens)   # one word for every sequence

``feats`` is ``{"global": [B, D], "grid": [B, L, C]}`` from an encoder or the feature cache. Every tensor in
``ctx`` and ``state`` is batch-first, so beam search can expand ``ctx`` once per beam and reorder ``state``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Features = dict[str, Tensor]
State = dict[str, Tensor]


class Decoder(nn.Module):
    has_attention: bool = False
    has_sentinel: bool = False  # its maps sum to 1 - beta_t, how much each word looked (adaptive attention)

    def __init__(self, vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.pad_id = pad_id

    # ---- the per-step interface -------------------------------------------------------------------
    def encode(self, feats: Features) -> State:
        raise NotImplementedError

    def init_state(self, ctx: State) -> State:
        raise NotImplementedError

    def step_logits(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor | None]:
        """prev: [B] previous word ids -> (logits [B, V], new state, attention [B, L] or None)."""
        raise NotImplementedError

    def step(self, ctx: State, state: State, prev: Tensor) -> tuple[Tensor, State, Tensor | None]:
        logits, state, alpha = self.step_logits(ctx, state, prev)
        return F.log_softmax(logits.float(), dim=-1), state, alpha  # [B, V]

    def choice_log_prob(self, ctx: State, state: State, alpha: Tensor | None) -> Tensor | None:
        """Log-probability [B] of the random choices the last step made besides its word (hard attention's
        sampled location), for score-function training of sampled captions (SCST); None when it made none."""
        return None

    # ---- training ---------------------------------------------------------------------------------
    def teacher_forcing(self, feats: Features, captions: Tensor, sample_prob: float = 0.0) -> dict[str, Tensor]:
        """Run the step function over ``captions[:, :-1]`` (``<start> w1 .. wn``), predicting ``captions[:, 1:]``.

        ``sample_prob``: scheduled sampling (Bengio et al. 2015): each next input word is, with this
        probability, a word sampled from the model's own prediction instead of the reference word.

        Returns logits [B, T-1, V], and for attention models alphas [B, T-1, L] (plus locs [B, T-1] for hard).
        """
        ctx = self.encode(feats)
        state = self.init_state(ctx)
        logits, alphas, locs = [], [], []
        prev = captions[:, 0]  # [B]
        for t in range(captions.size(1) - 1):
            step_logits, state, alpha = self.step_logits(ctx, state, prev)
            logits.append(step_logits)
            if alpha is not None:
                alphas.append(alpha)
            if "loc" in state:
                locs.append(state["loc"])
            if t + 2 < captions.size(1):
                prev = captions[:, t + 1]
                if sample_prob > 0:
                    own = torch.multinomial(F.softmax(step_logits.detach().float(), dim=-1), 1).squeeze(1)  # [B]
                    use_own = torch.rand(prev.shape, device=prev.device) < sample_prob
                    prev = torch.where(use_own, own, prev)
        out = {"logits": torch.stack(logits, 1)}  # [B, T-1, V]
        if alphas:
            out["alphas"] = torch.stack(alphas, 1)  # [B, T-1, L]
        if locs:
            out["locs"] = torch.stack(locs, 1)  # [B, T-1]
        out.update({k: v for k, v in ctx.items() if k.startswith("flag_")})
        return out

    def loss(self, feats: Features, captions: Tensor, sample_prob: float = 0.0, label_smoothing: float = 0.0,
             weights: Tensor | None = None, soft: tuple[Tensor, Tensor] | None = None,
             soft_weight: float = 0.0) -> dict[str, Tensor]:
        """Masked cross-entropy per word (+ model-specific terms). ``loss`` is what to minimise.

        ``label_smoothing`` (Szegedy et al. 2016) changes the objective only: ``nll`` (logged, and the reward
        of hard attention's REINFORCE term) stays the plain negative log-likelihood.
        ``weights`` [B]: each caption's weight in the cross-entropy (a teacher caption's, in distillation).
        ``soft`` (ids, probs [B, T-1, K]): a teacher's top-k next-word probabilities at each position, for a
        ``soft_weight`` x cross-entropy term against them (word-level distillation, Kim & Rush 2016):
        - sum_k p_k log q(w_k) over the positions that have them.
        """
        out = self.teacher_forcing(feats, captions, sample_prob)
        targets = captions[:, 1:]  # [B, T-1]
        mask = targets != self.pad_id
        logits = out["logits"].float().transpose(1, 2)  # [B, V, T-1]
        nll = F.cross_entropy(logits, targets, reduction="none") * mask  # [B, T-1]
        n_tokens = mask.sum().clamp(min=1)
        terms = {"nll": nll.sum() / n_tokens}
        if label_smoothing > 0:
            smoothed = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing) * mask
            terms = {"smoothed_nll": smoothed.sum() / n_tokens, "log_nll": terms["nll"].detach()}
        if weights is not None:  # weighted mean over the words instead of the plain mean
            w = mask * weights[:, None]  # [B, T-1]
            per_word = smoothed if label_smoothing > 0 else nll
            terms = {"weighted_nll": (per_word * w).sum() / w.sum().clamp(min=1e-8),
                     "log_nll": terms["nll"].detach() if "nll" in terms else terms["log_nll"]}
        if soft is not None and soft_weight > 0:
            ids, probs = soft  # [B, T-1, K]
            logq = F.log_softmax(out["logits"].float(), dim=-1).gather(-1, ids)  # [B, T-1, K]
            cross = -(probs * logq).sum(-1)  # [B, T-1]
            where = (probs.sum(-1) > 0) & mask
            terms["distill_topk"] = soft_weight * (cross * where).sum() / where.sum().clamp(min=1)
        terms.update(self.extra_losses(out, nll, mask, n_tokens))
        terms["loss"] = sum(v for k, v in terms.items() if not k.startswith("log_"))
        return terms

    def extra_losses(self, out: dict, nll: Tensor, mask: Tensor, n_tokens: Tensor) -> dict[str, Tensor]:
        """Model-specific loss terms; keys starting with ``log_`` are only logged, not added."""
        return {}
