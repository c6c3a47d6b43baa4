"""Sampling captions with gradients, for self-critical sequence training (SCST).

Uses the same per-step interface as beam search (``encode / init_state / step``), so every decoder can be
trained with SCST.
"""

import torch
from torch import Tensor

from captioner.decoders.base import Decoder, Features


def sample_captions(decoder: Decoder, feats: Features, start_id: int, end_id: int, n: int = 5,
                    max_len: int = 16, banned: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` captions per image, each word drawn from the model's distribution.

    Returns (words [B*n, T] with <end> and padding 0 after it, the sum of each caption's word
    log-probabilities [B*n] (differentiable; with the log-probabilities of any other random choice, such as
    hard attention's sampled locations), word counts [B*n] including <end>). Rows are image-major:
    row ``i * n + j`` is sample j of image i.
    """
    ctx = {k: v.repeat_interleave(n, dim=0) for k, v in decoder.encode(feats).items()}  # [B*n, ...]
    state = decoder.init_state(ctx)
    rows = next(iter(ctx.values())).size(0)
    device = next(iter(ctx.values())).device
    prev = torch.full((rows,), start_id, dtype=torch.long, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    words, logps = [], []
    for _ in range(max_len):
        logp, state, alpha = decoder.step(ctx, state, prev)  # [B*n, V]
        logp = logp.clone()
        logp[:, [decoder.pad_id, start_id, *banned]] = float("-inf")
        word = torch.multinomial(logp.detach().exp(), 1).squeeze(1)  # [B*n]
        word = torch.where(alive, word, torch.full_like(word, decoder.pad_id))
        picked = logp.gather(1, word.unsqueeze(1)).squeeze(1)  # [B*n]
        choice = decoder.choice_log_prob(ctx, state, alpha)  # [B*n] or None (hard attention's location)
        if choice is not None:
            picked = picked + choice
        logps.append(torch.where(alive, picked, torch.zeros_like(picked)))  # 0 once finished
        words.append(word)
        alive = alive & (word != end_id)
        prev = word
        if not bool(alive.any()):
            break
    words_t = torch.stack(words, 1)  # [B*n, T]
    lengths = (words_t != decoder.pad_id).sum(1)
    return words_t, torch.stack(logps, 1).sum(1), lengths
