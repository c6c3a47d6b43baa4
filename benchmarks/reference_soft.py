"""The yardstick for benchmarks: soft attention written plainly, as the paper states it and tutorials do.

- the encoder projection W_a a_i is recomputed at every word (inside the loop);
- every linear layer runs once per word, including the vocabulary projection;
- beam search decodes one image at a time.

It uses the weights of a :class:`captioner.decoders.SoftAttentionDecoder`, so its numbers must match ours
exactly (up to float rounding): `python -m pytest benchmarks/test_reference.py` checks that.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoders.soft import SoftAttentionDecoder


def reference_step(dec: SoftAttentionDecoder, grid: Tensor, h: Tensor, c: Tensor, prev: Tensor):
    """One word: returns (logits [B, V], h, c, alpha [B, L])."""
    emb = dec.embed(prev)  # [B, E]
    proj = dec.att_feat(grid)  # [B, L, A]  recomputed every word: the tutorials' main cost
    e = dec.att_score(torch.tanh(proj + dec.att_hidden(h).unsqueeze(1))).squeeze(2)  # [B, L]
    alpha = torch.softmax(e, dim=1)
    z = (alpha.unsqueeze(2) * grid).sum(dim=1)  # [B, C]
    z = torch.sigmoid(dec.f_beta(h)) * z
    h, c = dec.lstm(torch.cat([emb, z], dim=1), (h, c))
    out = torch.tanh(emb + dec.out_hidden(h) + dec.out_context(z))
    return dec.fc(dec.dropout(out)), h, c, alpha


def reference_loss(dec: SoftAttentionDecoder, grid: Tensor, captions: Tensor) -> Tensor:
    """Teacher-forced masked cross-entropy + doubly stochastic regularisation, one word at a time."""
    mean = grid.mean(dim=1)
    h, c = torch.tanh(dec.init_h(mean)), torch.tanh(dec.init_c(mean))
    logits, alphas = [], []
    for t in range(captions.size(1) - 1):
        step_logits, h, c, alpha = reference_step(dec, grid, h, c, captions[:, t])
        logits.append(step_logits)
        alphas.append(alpha)
    logits, alphas = torch.stack(logits, 1), torch.stack(alphas, 1)
    targets = captions[:, 1:]
    mask = targets != 0
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
    coverage = (alphas * mask.unsqueeze(2)).sum(dim=1)
    return nll.sum() / mask.sum() + dec.alpha_c * ((1.0 - coverage) ** 2).mean()


@torch.inference_mode()
def reference_beam_search(dec: SoftAttentionDecoder, grid: Tensor, start_id: int, end_id: int,
                          beam_size: int = 5, max_len: int = 30) -> list[list[int]]:
    """Tutorial-style beam search, one image at a time (finished beams leave the beam)."""
    captions = []
    for i in range(grid.size(0)):
        g = grid[i : i + 1]
        mean = g.mean(dim=1)
        h, c = torch.tanh(dec.init_h(mean)), torch.tanh(dec.init_c(mean))
        seqs = [[]]
        scores = torch.zeros(1)
        prev = torch.tensor([start_id])
        done: list[tuple[float, list[int]]] = []
        for _ in range(max_len):
            k = len(seqs)
            logits, h, c, _ = reference_step(dec, g.expand(k, -1, -1), h, c, prev)
            logp = torch.log_softmax(logits, dim=1)
            logp[:, [0, start_id]] = float("-inf")
            cand = (scores.unsqueeze(1) + logp).view(-1)
            top, idx = cand.topk(k if seqs[0] else beam_size)
            beam, word = idx // logp.size(1), idx % logp.size(1)
            keep_seqs, keep_rows, keep_scores, keep_words = [], [], [], []
            for s, b, w in zip(top.tolist(), beam.tolist(), word.tolist(), strict=True):
                if w == end_id:
                    done.append((s, seqs[b]))
                else:
                    keep_seqs.append(seqs[b] + [w])
                    keep_rows.append(b)
                    keep_scores.append(s)
                    keep_words.append(w)
            if not keep_seqs:
                break
            rows = torch.tensor(keep_rows)
            seqs, h, c = keep_seqs, h[rows], c[rows]
            scores, prev = torch.tensor(keep_scores), torch.tensor(keep_words)
        if not done:  # no beam ended: take the best unfinished one
            done = [(float(scores[0]), seqs[0])]
        captions.append(max(done, key=lambda x: x[0])[1])
    return captions
