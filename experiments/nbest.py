"""Shared by the reranking studies (consensus_study.py, rerank_signals.py), not a study itself: decode a split's
n-best lists once, and score chosen captions on the whole split and on its two halves."""

import argparse
from pathlib import Path

from captioner.captioning import decoding_decoder
from captioner.checkpoint import load_models
from captioner.cli import add_decode_set
from captioner.decoding import beam_search_nbest
from captioner.devices import module_device
from captioner.metrics.coco import score_corpus
from captioner.model import with_settings
from captioner.model_features import consensus_reranker, split_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def decode_nbest(model, feats, beam: int, batch_size: int = 100):
    """All K beams of every image and their captions as words."""
    options = model.config.decode.search_options(model.vocab)
    device = module_device(model.decoder)
    decoder = decoding_decoder(model)  # (decode.flip: both views)
    n = next(iter(feats.values())).size(0)
    nbest, batches = [], []
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size].to(device).float() for k, v in feats.items()}
        nbest += beam_search_nbest(decoder, batch, model.vocab.start_id, model.vocab.end_id,
                                   beam_size=beam, max_len=30, **options)
        batches.append(batch)
    return nbest, [[model.vocab.decode(h.tokens) for h in beams] for beams in nbest], batches


def add_split_args(p: argparse.ArgumentParser) -> None:
    """The models, the data and split, the beam size and --set: what both studies decode with."""
    p.add_argument("--model", type=Path, action="append", required=True)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--split", default="val")
    p.add_argument("--beam", type=int, default=5)
    add_decode_set(p)


def decode_split(args):
    """The model(s) of ``args``, the split's records, their n-best lists (beams, words, feature batches) and the
    consensus reranker over the training split."""
    model = load_models(args.model)
    if args.set:
        model = with_settings(model, args.set)
    chosen, feats, _ = split_features(model, args.data, args.split, progress=False)
    nbest, words, batches = decode_nbest(model, feats, args.beam)
    return model, chosen, nbest, words, batches, consensus_reranker(model, args.data, progress=False)


HALVES = ("all", "first half", "second half")
HALVES_HEADER = " | ".join(f"BLEU-4 {h} | CIDEr-D {h}" for h in HALVES)


def score_halves(chosen, captions: dict[str, str]) -> list[str]:
    """BLEU-4 and CIDEr-D (x100) of ``captions`` (image name -> caption) on the whole split and on its halves."""
    refs = {r.name: r.captions_raw for r in chosen}
    cells = []
    for part in (chosen, chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]):
        scores, _ = score_corpus({r.name: captions[r.name] for r in part}, {r.name: refs[r.name] for r in part},
                                 metrics=("bleu", "cider"))
        cells += [f"{100 * scores['BLEU-4']:.2f}", f"{100 * scores['CIDEr-D']:.2f}"]
    return cells
