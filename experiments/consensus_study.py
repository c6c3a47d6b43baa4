"""Consensus reranking study: BLEU-4 and CIDEr-D for each length penalty, number of neighbours k, weight and
minimum-Bayes-risk weight, on the whole split and on its two halves (choose the setting on one half, check it
on the other).

    python experiments/consensus_study.py --model A.pt [--model B.pt ...] --set decode.length_penalty=1.0 \
        --set decode.block_ngram=3 [--set model.hard_inference=expected] [--k 10,30,60] [--weights 0,0.1,0.3,1] \
        [--mbr 0,0.3] [--length-penalties 0.6,0.8,1]

The beams are decoded once (all K of each image, `beam_search_nbest`); each setting then only rechooses among
them, as `captioner evaluate --set decode.consensus=true --set decode.consensus_k=K --set
decode.consensus_weight=W --set decode.mbr_weight=M --set decode.length_penalty=P` would (both weights 0:
plain beam search). That is exact for every length penalty P: the n-best search runs until all K beams of an
image end, whatever P, and P only orders the K for the final choice.
Scores use pycocoevalcap with the Java PTB tokenizer (the Python copy without Java). The decoding and the scoring
are nbest.py's, shared with rerank_signals.py.
"""

import argparse

from nbest import HALVES, HALVES_HEADER, add_split_args, decode_split, score_halves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p)
    p.add_argument("--k", default="10,30,60")
    p.add_argument("--weights", default="0,0.1,0.3,1")
    p.add_argument("--mbr", default="0", help="minimum-Bayes-risk weights (decode.mbr_weight)")
    p.add_argument("--length-penalties", help="length penalties (default: the model's)")
    args = p.parse_args()
    model, chosen, nbest, words, batches, reranker = decode_split(args)  # k and weights set below
    lps = args.length_penalties or str(model.config.decode.length_penalty)

    lines = ["| length penalty | k | weight | MBR weight | " + HALVES_HEADER + " |",
             "|---|---|---|---|" + "---|---|" * len(HALVES)]
    grid = [[float(x) for x in arg.split(",")] for arg in (lps, args.k, args.weights, args.mbr)]
    settings = [(lp, int(k), w, m) for lp in grid[0] for k in grid[1] for w in grid[2] for m in grid[3]]
    seen_k = {}  # weight 0: the neighbours are not read, the same for every k
    for lp, k, weight, mbr in settings:
        if weight == 0 and seen_k.setdefault((lp, mbr), k) != k:
            continue
        reranker.k, reranker.weight, reranker.mbr_weight = k, weight, mbr
        picked, start = [], 0
        for batch in batches:
            size = next(iter(batch.values())).size(0)
            picked += reranker.choose(batch, nbest[start : start + size], words[start : start + size], lp)
            start += size
        caps = {r.name: " ".join(model.vocab.decode(h.tokens)) for r, h in zip(chosen, picked, strict=True)}
        cells = score_halves(chosen, caps)
        lines.append(f"| {lp:g} | {k} | {weight:g} | {mbr:g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print(f"\n{args.split} split, {len(chosen)} images, beam {args.beam}, {', '.join(args.set)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
