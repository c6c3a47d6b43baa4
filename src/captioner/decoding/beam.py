"""Batched beam search over B images x K beams at once, for any decoder with the per-step interface.

- Beam size 1 is greedy decoding.
- Finished beams keep their place and score; they are only extended by ``<end>`` at no cost.
- A beam that never emits ``<end>`` is cut at ``max_len``: every image always gets a caption.
- Final choice among the K beams uses ``score / length ** length_penalty`` (0: plain sum of log-probs).
  :func:`beam_search_nbest` returns all K, best first, for reranking (:mod:`captioner.decoding.rerank`).
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


def beam_search(decoder: Decoder, feats: Features, start_id: int, end_id: int, beam_size: int = 5,
                max_len: int = 30, length_penalty: float = 0.0, banned: tuple[int, ...] = (),
                block_ngram: int = 0, repetition_penalty: float = 0.0) -> list[Hypothesis]:
    """Decode a batch of images; returns the best hypothesis for each image, in batch order (the arguments:
    :func:`beam_search_nbest`)."""
    return [beams[0] for beams in _search(decoder, feats, start_id, end_id, beam_size, max_len, length_penalty,
                                          banned, block_ngram, repetition_penalty, n_best=False)]


def beam_search_nbest(decoder: Decoder, feats: Features, start_id: int, end_id: int, beam_size: int = 5,
                      max_len: int = 30, length_penalty: float = 0.0, banned: tuple[int, ...] = (),
                      block_ngram: int = 0, repetition_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """Decode a batch of images; returns all K final beams of each image, best first (by
    ``score / length ** length_penalty``), for reranking (:mod:`captioner.decoding.rerank`).

    ``banned``: word ids never generated (besides <pad> and <start>), e.g. ``(vocab.unk_id,)``.
    ``block_ngram``: n > 1 forbids a beam to repeat any n-gram it already contains ("a man in a man in").
    ``repetition_penalty``: log-probability (nats) taken off a word for each time the beam already used it.
    Every image is decoded until all its K beams have ended (or reached ``max_len``).
    """
    return _search(decoder, feats, start_id, end_id, beam_size, max_len, length_penalty, banned, block_ngram,
                   repetition_penalty, n_best=True)


@torch.inference_mode()
def _search(decoder: Decoder, feats: Features, start_id: int, end_id: int, beam_size: int, max_len: int,
            length_penalty: float, banned: tuple[int, ...], block_ngram: int, repetition_penalty: float,
            n_best: bool) -> list[list[Hypothesis]]:
    """The batched beam search; ``n_best``: return all K beams of each image (else only the best).

    Images whose result can no longer change are dropped from the computation (their rows are compacted
    away), so a batch costs what its images need, not what its slowest image needs.
    """
    batch = next(iter(feats.values())).size(0)
    k = beam_size
    ctx = decoder.encode(feats)  # per-image tensors [B, ...]; expanded to K beams after the first word
    state = decoder.init_state(ctx)
    device = ctx[next(iter(ctx))].device
    beams = torch.arange(k, device=device)

    width = 1  # beams per image so far: 1 before the first word (all K beams would be identical)
    scores = torch.zeros(batch, width, device=device)  # [B', width] for the B' images still decoding
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)  # [B'*width]
    lengths = torch.zeros(batch, dtype=torch.long, device=device)  # words incl. <end>
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)  # which images the B' rows of the batch are
    # results and history in full indexing (row = image * K + beam), whatever is still active
    final = {"score": torch.zeros(batch * k, device=device),
             "length": torch.zeros(batch * k, dtype=torch.long, device=device),
             "finished": torch.zeros(batch * k, dtype=torch.bool, device=device)}
    history: dict[str, list[Tensor]] = {"parent": [], "word": [], "alpha": [], "loc": []}
    words_so_far = torch.zeros(batch, 0, dtype=torch.long, device=device)  # [B'*width, t] (only if needed)
    penalise = block_ngram > 1 or repetition_penalty > 0

    for _ in range(max_len):
        logp, state, alpha = decoder.step(ctx, state, tokens)  # [B'*K, V]
        vocab, n_img = logp.size(1), scores.size(0)
        _ban(logp, (decoder.pad_id, start_id, *banned))
        if penalise:
            _penalise(logp, words_so_far, block_ngram, repetition_penalty)
        if bool(finished.any()):  # a finished beam may only continue with <end>, at no cost: its score stays
            logp[finished] = _end_only(vocab, end_id, logp)
        cand = (scores.unsqueeze(2) + logp.view(n_img, width, vocab)).view(n_img, width * vocab)  # [B', w*V]
        scores, flat = cand.topk(k, dim=1)  # [B', K]
        beam = torch.div(flat, vocab, rounding_mode="floor")  # integer division: which beam
        word = flat % vocab  # which word
        src = (torch.arange(n_img, device=device).unsqueeze(1) * width + beam).view(-1)  # [B'*K] rows continued
        state = {name: t.index_select(0, src) for name, t in state.items()}
        was_finished = finished.index_select(0, src)
        lengths = lengths.index_select(0, src) + (~was_finished).long()
        finished = was_finished | (word.view(-1) == end_id)
        tokens = word.view(-1)
        if penalise:
            words_so_far = torch.cat([words_so_far.index_select(0, src), tokens.unsqueeze(1)], dim=1)

        rows = (active.unsqueeze(1) * k + beams).view(-1)  # [B'*K] full-index rows
        parents = rows[src] if width == k else rows  # before the first word there is nothing to point to
        if width == 1:
            ctx, width = _expand(ctx, k), k
        _record(history, batch * k, rows, parents, tokens, end_id,
                alpha.index_select(0, src) if alpha is not None else None, state.get("loc"))
        final["score"][rows], final["length"][rows], final["finished"][rows] = scores.view(-1), lengths, finished

        done = (finished.view_as(scores).all(dim=1) if n_best  # [B'] bool; n-best: all K beams have ended
                else _done_images(scores, finished, length_penalty))
        if bool(done.all()):
            break
        if bool(done.any()):  # compact: keep decoding only the images whose result can still change
            keep_img = (~done).nonzero().squeeze(1)
            keep = (keep_img.unsqueeze(1) * k + beams).view(-1)
            ctx = {name: t.index_select(0, keep) for name, t in ctx.items()}
            state = {name: t.index_select(0, keep) for name, t in state.items()}
            scores, tokens = scores.index_select(0, keep_img), tokens.index_select(0, keep)
            lengths, finished = lengths.index_select(0, keep), finished.index_select(0, keep)
            active = active.index_select(0, keep_img)
            words_so_far = words_so_far.index_select(0, keep) if penalise else words_so_far

    norm = final["score"] / final["length"].clamp(min=1).float() ** length_penalty  # [B*K]
    order = norm.view(batch, k).argsort(dim=1, descending=True, stable=True)  # [B, K] beams, best first
    rows = order[:, : k if n_best else 1] + torch.arange(batch, device=device).unsqueeze(1) * k  # [B, K or 1]
    # backtracking reads single elements: on a GPU, one copy to the CPU instead of one sync per element
    history = {name: [t.cpu() for t in steps] for name, steps in history.items()}
    final = {name: t.cpu() for name, t in final.items()}
    return [[_backtrack(r, history, float(final["score"][r]), int(final["length"][r]), bool(final["finished"][r]))
             for r in image_rows] for image_rows in rows.tolist()]


def _record(history: dict, n_rows: int, rows: Tensor, parents: Tensor, words: Tensor, end_id: int,
            alpha: Tensor | None, loc: Tensor | None) -> None:
    """Store one step in full indexing; rows of images no longer decoding point to themselves."""
    parent = torch.arange(n_rows, device=rows.device)
    parent[rows] = parents
    word = torch.full((n_rows,), end_id, dtype=torch.long, device=rows.device)
    word[rows] = words
    history["parent"].append(parent)
    history["word"].append(word)
    if alpha is not None:
        full = alpha.new_zeros(n_rows, alpha.size(1))
        full[rows] = alpha
        history["alpha"].append(full)
    if loc is not None:
        full_loc = torch.zeros(n_rows, dtype=torch.long, device=rows.device)
        full_loc[rows] = loc
        history["loc"].append(full_loc)


def _done_images(scores: Tensor, finished: Tensor, length_penalty: float) -> Tensor:
    """[B'] True for images whose final answer is fixed: all K beams finished, or (without length
    normalisation) a finished beam scores at least as high as every unfinished one. An unfinished beam's
    score can only fall, so nothing can overtake that finished beam: stopping now gives exactly the result
    of decoding to the end."""
    fin = finished.view_as(scores)
    if length_penalty != 0:
        return fin.all(dim=1)
    best_done = torch.where(fin, scores, float("-inf")).max(dim=1).values  # [B']
    best_open = torch.where(fin, float("-inf"), scores).max(dim=1).values  # [B']
    return best_done >= best_open


def _backtrack(row: int, history: dict, score: float, length: int, done: bool) -> Hypothesis:
    """Follow the backpointers from the last step to the first to read off one beam."""
    words, alphas, locs = [], [], []
    for t in range(len(history["parent"]) - 1, -1, -1):
        words.append(int(history["word"][t][row]))
        if history["alpha"]:
            alphas.append(history["alpha"][t][row])
        if history["loc"]:
            locs.append(int(history["loc"][t][row]))
        row = int(history["parent"][t][row])
    n = length - 1 if done else length  # drop <end>
    words = words[::-1][:n]
    alpha_t = torch.stack(alphas[::-1])[:n].cpu() if alphas else None
    return Hypothesis(words, score, done, alpha_t, locs[::-1][:n] if locs else None)


def _ban(logp: Tensor, ids: tuple[int, ...]) -> None:
    """Words a caption can never contain (<pad>, <start>) get probability 0, in place (``logp`` is the
    fresh output of ``decoder.step``)."""
    logp[:, list(ids)] = float("-inf")


def _penalise(logp: Tensor, words: Tensor, block_ngram: int, repetition_penalty: float) -> None:
    """In place: n-gram blocking and the repetition penalty for each row, given its words so far [R, t]."""
    if words.size(1) == 0:
        return
    if repetition_penalty > 0:  # -penalty for every earlier use of a word
        logp.scatter_add_(1, words, torch.full(words.shape, -repetition_penalty, dtype=logp.dtype,
                                               device=logp.device))
    n = block_ngram
    if n > 1 and words.size(1) >= n - 1:
        last = words[:, words.size(1) - (n - 1):]  # [R, n-1] the words the next one would extend
        if words.size(1) >= n:
            grams = words.unfold(1, n, 1)  # [R, W, n] every n-gram so far
            seen = (grams[:, :, : n - 1] == last.unsqueeze(1)).all(dim=2)  # [R, W] same first n-1 words
            blocked = torch.where(seen, grams[:, :, n - 1], grams.new_full((), -1))  # [R, W] word to forbid
            rows, cols = (blocked >= 0).nonzero(as_tuple=True)
            logp[rows, blocked[rows, cols]] = float("-inf")


def _end_only(vocab: int, end_id: int, like: Tensor) -> Tensor:
    row = torch.full((1, vocab), float("-inf"), device=like.device, dtype=like.dtype)
    row[0, end_id] = 0.0
    return row  # [1, V], broadcast over the batch


@torch.inference_mode()
def greedy_search(decoder: Decoder, feats: Features, start_id: int, end_id: int,
                  max_len: int = 30, banned: tuple[int, ...] = ()) -> list[Hypothesis]:
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
        _ban(logp, (decoder.pad_id, start_id, *banned))
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
