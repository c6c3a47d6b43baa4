"""Batched beam search over B images x K beams at once, for any decoder with the per-step interface.

- Beam size 1 is greedy decoding.
- Finished beams keep their place and score; they are only extended by ``<end>`` at no cost.
- A beam that never emits ``<end>`` is cut at ``max_len``: every image always gets a caption.
- Final choice among the K beams uses ``score / length ** length_penalty`` (0: plain sum of log-probs).
- Per-token attention maps are returned with each caption.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.decoders.base import Decoder, Features


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <start> and <end>
    score: float  # sum of log-probabilities of the words and of <end> (if emitted)
    finished: bool  # False when cut at max_len
    alphas: Tensor | None = None  # [len(tokens), L] attention for each word, or None (NIC)
    locs: list[int] | None = None  # hard attention: the location used for each word


def _expand(ctx: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    return {name: t.repeat_interleave(k, dim=0) for name, t in ctx.items()}  # [B*K, ...]


@torch.inference_mode()
def beam_search(decoder: Decoder, feats: Features, start_id: int, end_id: int, beam_size: int = 5,
                max_len: int = 30, length_penalty: float = 0.0) -> list[Hypothesis]:
    """Decode a batch of images; returns the best hypothesis for each image, in batch order."""
    batch = next(iter(feats.values())).size(0)
    k = beam_size
    ctx = _expand(decoder.encode(feats), k)  # per-image tensors, now [B*K, ...]
    state = decoder.init_state(ctx)
    device = ctx[next(iter(ctx))].device

    scores = torch.zeros(batch, k, device=device)  # [B, K]
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)  # [B*K]
    seqs = torch.empty(batch * k, 0, dtype=torch.long, device=device)  # [B*K, t]
    lengths = torch.zeros(batch * k, dtype=torch.long, device=device)  # words incl. <end>
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    alpha_hist: list[Tensor] = []
    loc_hist: list[Tensor] = []
    base = (torch.arange(batch, device=device) * k).unsqueeze(1)  # [B, 1]

    for _ in range(max_len):
        logp, state, alpha = decoder.step(ctx, state, tokens)  # [B*K, V]
        logp = _ban(logp, (decoder.pad_id, start_id))
        vocab = logp.size(1)
        # a finished beam may only continue with <end>, at no cost, so its score stays fixed
        logp = torch.where(finished.unsqueeze(1), _end_only(vocab, end_id, logp), logp)
        cand = (scores.unsqueeze(2) + logp.view(batch, k, vocab)).view(batch, k * vocab)  # [B, K*V]
        scores, flat = cand.topk(k, dim=1)  # [B, K]
        beam = torch.div(flat, vocab, rounding_mode="floor")  # integer division: which beam
        word = flat % vocab  # which word
        src = (base + beam).view(-1)  # [B*K] rows to continue from
        state = {name: t.index_select(0, src) for name, t in state.items()}
        seqs = torch.cat([seqs.index_select(0, src), word.view(-1, 1)], dim=1)
        was_finished = finished.index_select(0, src)
        lengths = lengths.index_select(0, src) + (~was_finished).long()
        finished = was_finished | (word.view(-1) == end_id)
        tokens = word.view(-1)
        if alpha is not None:
            alpha_hist = [a.index_select(0, src) for a in alpha_hist] + [alpha.index_select(0, src)]
        if "loc" in state:
            loc_hist = [x.index_select(0, src) for x in loc_hist] + [state["loc"]]
        if bool(finished.all()):
            break

    norm = scores.view(-1) / lengths.clamp(min=1).float() ** length_penalty  # [B*K]
    best = norm.view(batch, k).argmax(dim=1) + base.view(-1)  # [B] row of the best beam per image
    return [_hypothesis(int(r), seqs, scores.view(-1), lengths, finished, alpha_hist, loc_hist, end_id)
            for r in best]


def _ban(logp: Tensor, ids: tuple[int, ...]) -> Tensor:
    """Words a caption can never contain (<pad>, <start>) get probability 0."""
    logp = logp.clone()
    logp[:, list(ids)] = float("-inf")
    return logp


def _end_only(vocab: int, end_id: int, like: Tensor) -> Tensor:
    row = torch.full((1, vocab), float("-inf"), device=like.device, dtype=like.dtype)
    row[0, end_id] = 0.0
    return row  # [1, V], broadcast over the batch


def _hypothesis(row, seqs, scores, lengths, finished, alpha_hist, loc_hist, end_id) -> Hypothesis:
    n = int(lengths[row])
    done = bool(finished[row])
    words = seqs[row, : n - 1 if done else n].tolist()
    alphas = torch.stack([a[row] for a in alpha_hist])[: len(words)].cpu() if alpha_hist else None
    locs = [int(x[row]) for x in loc_hist][: len(words)] if loc_hist else None
    return Hypothesis(words, float(scores[row]), done, alphas, locs)


@torch.inference_mode()
def greedy_search(decoder: Decoder, feats: Features, start_id: int, end_id: int,
                  max_len: int = 30) -> list[Hypothesis]:
    """Plain greedy decoding (argmax at every step); the reference that beam size 1 must equal."""
    ctx = decoder.encode(feats)
    state = decoder.init_state(ctx)
    batch = ctx[next(iter(ctx))].size(0)
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=ctx[next(iter(ctx))].device)
    words: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    done = [False] * batch
    alphas: list[list[Tensor]] = [[] for _ in range(batch)]
    for _ in range(max_len):
        logp, state, alpha = decoder.step(ctx, state, tokens)
        logp = _ban(logp, (decoder.pad_id, start_id))
        best_logp, tokens = logp.max(dim=1)
        for i in range(batch):
            if done[i]:
                continue
            scores[i] += float(best_logp[i])
            if int(tokens[i]) == end_id:
                done[i] = True
            else:
                words[i].append(int(tokens[i]))
                if alpha is not None:
                    alphas[i].append(alpha[i].cpu())
        if all(done):
            break
    return [Hypothesis(w, s, d, torch.stack(a) if a else None) for w, s, d, a in
            zip(words, scores, done, alphas, strict=True)]
