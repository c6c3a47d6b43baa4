"""A test-time ensemble of models trained on different encoders, scored on a split like `captioner evaluate`.

    python scripts/cross_encoder_ensemble.py A.pt B.pt --data ../shared/data/flickr8k --out report.json \
        --set decode.length_penalty=1.0 --set decode.block_ngram=3

`captioner evaluate --model A --model B` joins decoders that read the same encoder features; here each model
file (one decoder or an ensemble file) computes its features with its own encoder (from the feature cache, or
from the images when it carries a fine-tuned encoder), and one beam search decodes with every decoder of every
file, each reading its own file's features. The models must share the vocabulary (same training captions and
min_word_freq). Decoding settings: the first file's, then --set. The report is `captioner evaluate --out`'s
(`captioner compare` reads it). Not for shipping: the files keep their own encoders.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from captioner.checkpoint import load_model
from captioner.cli import add_decode_set, print_table
from captioner.config import with_decode_settings
from captioner.decoders.ensemble import EnsembleDecoder
from captioner.errors import CaptionerError
from captioner.inference import score_split, split_features


def joined(paths: list[Path], data: Path, split: str, limit: int | None, cache: Path | None = None):
    """One model whose decoders are every file's, and the features each reads: {"j.grid": ..., "j.global": ...}
    for the j-th file."""
    models = [load_model(p) for p in paths]
    first = models[0]
    decoders, groups, feats, chosen, failed = [], [], {}, None, set()
    for j, (path, model) in enumerate(zip(paths, models, strict=True)):
        if model.vocab != first.vocab:
            raise CaptionerError(f"{path}: another vocabulary than {paths[0]}'s")
        records, f, bad = split_features(model, data, split, cache, limit, progress=False)  # [n, L, C] grids
        names = [r.name for r in records]
        if chosen is not None and names != [r.name for r in chosen]:
            raise CaptionerError(f"{path}: its encoder could read other images of the split than {paths[0]}'s")
        chosen, failed = records, failed | set(bad)
        feats |= {f"{j}.{k}": v for k, v in f.items()}
        for decoder, _config in model.parts():
            decoders.append(decoder)
            groups.append(j)
    ensemble = EnsembleDecoder(decoders, feature_groups=groups).eval()
    model = dataclasses.replace(first, decoder=ensemble, metrics={"ensemble": [str(p) for p in paths]},
                                member_configs=[c for m in models for _, c in m.parts()])
    return model, chosen, feats, sorted(failed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model files (two or more; each may be an ensemble file)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="val")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--max-len", type=int, default=30)
    p.add_argument("--limit", type=int, help="only the split's first N images")
    p.add_argument("--cache", type=Path, help="feature cache root (default $CAPTIONER_CACHE or ~/.cache/captioner)")
    p.add_argument("--tokenizer", default="auto", choices=["auto", "ptb", "python"])
    p.add_argument("--no-meteor", action="store_true")
    p.add_argument("--out", type=Path, help="JSON report (captioner evaluate --out's format)")
    add_decode_set(p)
    args = p.parse_args()
    try:
        with torch.no_grad():
            model, chosen, feats, failed = joined(args.models, args.data, args.split, args.limit, args.cache)
            if args.set:
                model.config = with_decode_settings(model.config, args.set)
            metrics = ("bleu", "rouge", "cider") if args.no_meteor else ("bleu", "meteor", "rouge", "cider")
            report = score_split(model, chosen, feats, failed, str(args.data), args.split, args.beam_size,
                                 args.max_len, args.out, args.tokenizer, metrics)
    except CaptionerError as e:
        sys.exit(f"error: {e}")
    print(f"{model.kind}, from {len(args.models)} files")
    print_table(report)


if __name__ == "__main__":
    main()
