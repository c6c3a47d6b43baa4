"""Does a trained attention model use WHERE it looks? Re-score it with its attention maps tampered with.

    python experiments/attention_check.py RUN/model.pt [RUN2/model.pt ...] --data ../shared/data/flickr8k

For each model, decode the val split (beam 5, the model's own decoding settings) three ways and score each
with coco-caption:
  learned   the model as trained;
  shuffled  each attention map moved to other places: the 7x7 weights are permuted by one fixed random
            permutation of the locations, so the map is as sharp as before but points elsewhere;
  uniform   every location weighted 1/L (the mean-pooled context; a hard-attention model is given that
            expected context instead of a sampled location).
  expected / argmax  (hard attention only) the learned maps, with the other context at decoding time than the
            model's own (model.hard_inference): the expected context, or the argmax location.
If attention learned nothing useful, "shuffled" scores like "learned". Also printed: the mean entropy of the
learned maps over the decoded words (ln 49 = 3.89 nats is uniform). Writes a JSON report with --out.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from captioner.captioning import decode_batches  # noqa: E402
from captioner.checkpoint import load_model  # noqa: E402
from captioner.features import load_features, split_rows  # noqa: E402
from captioner.metrics.coco import score_corpus  # noqa: E402

METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def tamper(decoder, mode: str, n_loc: int, seed: int = 0) -> None:
    """Replace the decoder's attention maps at decoding time (on this instance only)."""
    if mode == "learned":
        return
    learned = decoder.attend
    if mode == "shuffled":
        perm = torch.randperm(n_loc, generator=torch.Generator().manual_seed(seed))
        while (perm == torch.arange(n_loc)).any():  # no location keeps its own weight
            perm = torch.randperm(n_loc, generator=torch.Generator().manual_seed(seed := seed + 1))
        decoder.attend = lambda ctx, h: learned(ctx, h)[:, perm]  # [B, L]
    elif mode == "uniform":
        decoder.attend = lambda ctx, h: torch.full((h.size(0), n_loc), 1.0 / n_loc, dtype=h.dtype,
                                                   device=h.device)  # [B, L]
        if hasattr(decoder, "hard_inference"):  # argmax of a flat map is meaningless: use its expectation
            decoder.hard_inference = "expected"
    elif mode in ("expected", "argmax"):
        decoder.hard_inference = mode
    else:
        raise ValueError(mode)


def check(model_path: Path, data: Path, beam: int, limit: int | None) -> dict:
    model = load_model(model_path)
    if not model.decoder.has_attention:
        sys.exit(f"{model_path}: a {model.config.model.type} model has no attention to check")
    _, records, _, cache = load_features(model.config, data, None, False)
    chosen, rows = split_rows(records, cache, "val", limit)
    global_t, grid_t = cache.load_rows(rows)  # [n, D], [n, L, C]
    references = {r.name: r.captions_raw for r in chosen}
    modes = ["learned", "shuffled", "uniform"]
    if model.config.model.type == "hard":  # and with the other decoding-time context than its own
        modes.append("argmax" if model.config.model.hard_inference == "expected" else "expected")
    results = {}
    for mode in modes:
        model = load_model(model_path)  # fresh each time: tamper() changes the decoder
        tamper(model.decoder, mode, grid_t.size(1))
        hyps = decode_batches(model, {"global": global_t, "grid": grid_t}, beam_size=beam)
        candidates = {r.name: " ".join(model.vocab.decode(h.tokens)) for r, h in zip(chosen, hyps, strict=True)}
        corpus, _ = score_corpus(candidates, references)
        row = {m: corpus[m] for m in METRICS}
        row["mean_length"] = sum(len(h.tokens) for h in hyps) / len(hyps)
        if mode == "learned":
            alphas = torch.cat([h.alphas.float() for h in hyps if h.alphas is not None and len(h.tokens)])
            row["attention_entropy"] = float(-(alphas * alphas.clamp(min=1e-12).log()).sum(1).mean())
        results[mode] = row
        print(f"{model_path}  {mode:8s} " + "  ".join(f"{m} {100 * row[m]:.1f}" for m in METRICS)
              + (f"  entropy {row['attention_entropy']:.2f} nats" if "attention_entropy" in row else ""),
              flush=True)
    return {"model": str(model_path), "images": len(hyps), "beam_size": beam, "results": results,
            "uniform_entropy": math.log(grid_t.size(1))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--limit", type=int, help="only the first N val images (quick look)")
    p.add_argument("--out", type=Path, help="JSON report")
    args = p.parse_args()
    reports = [check(m, args.data, args.beam_size, args.limit) for m in args.models]
    if args.out:
        from captioner.io import write_json_atomic

        write_json_atomic(args.out, reports)


if __name__ == "__main__":
    main()
