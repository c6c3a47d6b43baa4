"""Which signals choose the best of the beam? The caption chosen among each image's K beams by

    score / length^p  +  C x CIDEr-D consensus  +  B x BLEU-4 consensus  +  M x image-caption match

scored on the whole split and on its two halves (choose on one half, check on the other), and the oracle: each
image's beam with the highest BLEU-4 against its own references, the ceiling of any choice among these beams.

    python experiments/rerank_signals.py --model A.pt [--model B.pt ...] --set decode.length_penalty=1.0 \
        --set decode.block_ngram=3 [--set model.hard_inference=expected] [--beam 5] [--length-penalties 0.7,1] \
        [--cider 0,0.3,0.5] [--bleu 0,1,3] [--match 0,1,3] [--match-epochs 30]

CIDEr-D consensus: as `decode.consensus` (decoding/rerank.py): CIDEr-D against the captions of the k nearest
training images. BLEU-4 consensus: the mean over those k images of the caption's sentence BLEU-4 (coco-caption's)
against each one's captions. Match: the cosine similarity of the caption and the image in a small contrastive
image-caption model (a bidirectional GRU over the words, an MLP over the first file's global feature; Frome et
al. 2013, Kiros et al. 2014; Fang et al. 2015 reranked captions with such a model), trained here on the training
split for --match-epochs epochs (a few minutes on a CPU); its text-to-image recall@1 on the split is printed.
The beams are decoded once (`beam_search_nbest`: nbest.py, shared with consensus_study.py). Scores: pycocoevalcap
with the Java PTB tokenizer (the Python copy without Java).
"""

import argparse
import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from nbest import HALVES, HALVES_HEADER, add_split_args, decode_split, score_halves
from torch import Tensor, nn

from captioner.metrics.bleu_reward import BleuReward

MAX_WORDS = 20


class Matcher(nn.Module):
    """Image and caption in one 512-d space: cosine similarity high for a caption of the image."""

    def __init__(self, vocab_size: int, feat_dim: int, embed: int = 300, hidden: int = 512, dim: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.text_out = nn.Linear(2 * hidden, dim)
        self.image_out = nn.Sequential(nn.Linear(feat_dim, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # the softmax temperature, learnt

    def text(self, ids: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True)  # [B, T, 2H]
        mask = (torch.arange(out.size(1))[None] < lengths[:, None]).float()[..., None]  # [B, T, 1]
        return F.normalize(self.text_out((out * mask).sum(1) / mask.sum(1)), dim=-1)  # [B, dim] mean over words

    def image(self, feats: Tensor) -> Tensor:
        return F.normalize(self.image_out(feats), dim=-1)  # [B, dim]


def pad(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    seqs = [s[:MAX_WORDS] or [0] for s in seqs]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)  # [B, T]
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def train_matcher(vocab, feats: Tensor, captions: list[list[list[str]]], epochs: int) -> tuple[Matcher, Callable]:
    """A matcher trained on the training images (``feats`` [N, D]) and their captions, and its feature scaling."""
    torch.manual_seed(0)
    rng = random.Random(0)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    scale = lambda f: (f - mean) / std  # noqa: E731
    ids = [[vocab.encode(c, add_special=False) for c in caps] for caps in captions]
    model = Matcher(len(vocab), feats.size(1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    for epoch in range(epochs):
        order, total = torch.randperm(len(ids)).tolist(), 0.0
        for start in range(0, len(order), 128):
            batch = order[start : start + 128]  # one random caption of each image: no two positives in a batch
            images = model.image(scale(feats[batch]))  # [B, dim]
            texts = model.text(*pad([rng.choice(ids[i]) for i in batch]))  # [B, dim]
            logits = model.log_scale.exp().clamp(max=100) * texts @ images.T  # [B, B]
            target = torch.arange(len(batch))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"matcher epoch {epoch + 1}: loss {total / math.ceil(len(order) / 128):.3f}", flush=True)
    return model.eval(), scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p)
    p.add_argument("--length-penalties", default="0.7,1")
    p.add_argument("--cider", default="0,0.3,0.5", help="CIDEr-D consensus weights")
    p.add_argument("--bleu", default="0,1,3", help="BLEU-4 consensus weights")
    p.add_argument("--match", default="0,1,3", help="image-caption match weights")
    p.add_argument("--match-epochs", type=int, default=30)
    args = p.parse_args()
    model, chosen, nbest, words, batches, reranker = decode_split(args)
    train_refs = {str(i): caps for i, caps in enumerate(reranker.captions)}
    bleu = BleuReward(train_refs)
    query = torch.cat([b[reranker.key] for b in batches]).float().cpu()  # [n, D]
    near = reranker.neighbours({reranker.key: query})

    # per image, per beam: log-probability, length, CIDEr-D consensus, BLEU-4 consensus, match
    signals = []
    for beams, beam_words, neighbours in zip(nbest, words, near, strict=True):
        refs = [v for j in neighbours for v in reranker.cider.refs[str(j)]]
        signals.append(np.array([[h.score, max(1, len(h.tokens) + h.finished), reranker.cider.score_against(w, refs),
                                  np.mean([bleu.score_one(str(j), w) for j in neighbours]), 0.0]
                                 for h, w in zip(beams, beam_words, strict=True)]))
    match_weights = [float(x) for x in args.match.split(",")]
    if any(match_weights):
        matcher, scale = train_matcher(model.vocab, reranker.index, reranker.captions, args.match_epochs)
        with torch.no_grad():
            images = matcher.image(scale(query))  # [n, dim]
            own = matcher.text(*pad([model.vocab.encode(r.captions[0], add_special=False) for r in chosen]))
            recall = ((own @ images.T).argmax(1) == torch.arange(len(chosen))).float().mean().item()
            print(f"matcher: text-to-image recall@1 on {args.split} ({len(chosen)} images) {100 * recall:.1f} %")
            for s, beam_words, image in zip(signals, words, images, strict=True):
                ids = pad([model.vocab.encode(w, add_special=False) for w in beam_words])
                s[:, 4] = (matcher.text(*ids) @ image).numpy()

    def row(pick: list[int]) -> list[str]:
        return score_halves(chosen, {r.name: " ".join(words[i][pick[i]]) for i, r in enumerate(chosen)})

    own_bleu = BleuReward({r.name: r.captions for r in chosen})
    oracle = [int(np.argmax([own_bleu.score_one(r.name, w) for w in words[i]])) for i, r in enumerate(chosen)]
    lines = ["| length penalty | CIDEr-D consensus | BLEU-4 consensus | match | " + HALVES_HEADER + " |",
             "|---|---|---|---|" + "---|---|" * len(HALVES)]
    lines.append("| oracle (own references' BLEU-4) | | | | " + " | ".join(row(oracle)) + " |")
    print(lines[-1], flush=True)
    grid = [[float(x) for x in a.split(",")] for a in (args.length_penalties, args.cider, args.bleu)]
    for lp, wc, wb, wm in itertools.product(*grid, match_weights):
        pick = [int(np.argmax(s[:, 0] / s[:, 1] ** lp + wc * s[:, 2] + wb * s[:, 3] + wm * s[:, 4])) for s in signals]
        lines.append(f"| {lp:g} | {wc:g} | {wb:g} | {wm:g} | " + " | ".join(row(pick)) + " |")
        print(lines[-1], flush=True)
    print(f"\n{args.split} split, {len(chosen)} images, beam {args.beam}, k {reranker.k}, {', '.join(args.set)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
