"""Beam size study: BLEU-4, CIDEr-D, mean caption length and decoding time for beams 1, 3, 5, 10, 20.

    python experiments/beam_study.py                          # the shipped model, Flickr8k val
    python experiments/beam_study.py --model RUN/model.pt --data DIR --beams 1,5
    python experiments/beam_study.py --set decode.length_penalty=1.0   # with other decoding settings

Features come from the cache, or from the model's own encoder if it carries one (as in `captioner
evaluate`); the time is the beam search alone, all val images in batches, on this machine's CPU threads. Scores use pycocoevalcap with the Java PTB tokenizer.
"""

import argparse
import time
from pathlib import Path

import torch

from captioner.captioning import decode_batches
from captioner.checkpoint import default_model_path, load_model
from captioner.cli import add_decode_set
from captioner.metrics.coco import score_corpus
from captioner.model import with_settings
from captioner.model_features import split_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--split", default="val")
    p.add_argument("--beams", default="1,3,5,10,20")
    add_decode_set(p)
    args = p.parse_args()
    model = load_model(args.model or default_model_path())
    if args.set:
        model = with_settings(model, args.set)
    chosen, feats, _ = split_features(model, args.data, args.split, progress=False)  # [n, D], [n, L, C]
    refs = {r.name: r.captions_raw for r in chosen}

    lines = [f"| beam | BLEU-4 | CIDEr-D | mean length (words) | decoding time ({len(chosen)} images) |",
             "|---|---|---|---|---|"]
    for beam in (int(b) for b in args.beams.split(",")):
        start = time.perf_counter()
        hyps = decode_batches(model, feats, beam, 30)
        seconds = time.perf_counter() - start
        caps = {r.name: " ".join(model.vocab.decode(h.tokens)) for r, h in zip(chosen, hyps, strict=True)}
        scores, _ = score_corpus(caps, refs, metrics=("bleu", "cider"))
        length = sum(len(c.split()) for c in caps.values()) / len(caps)
        lines.append(f"| {beam} | {100 * scores['BLEU-4']:.1f} | {100 * scores['CIDEr-D']:.1f} | {length:.1f} "
                     f"| {seconds:.1f} s |")
        print(lines[-1], flush=True)
    settings = f", {', '.join(args.set)}" if args.set else ""
    print(f"\n{args.split} split, {len(chosen)} images, {torch.get_num_threads()} threads{settings}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
