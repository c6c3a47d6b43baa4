"""Training and decoding cost of each decoder type, side by side in one run.

    python benchmarks/decoders.py            # soft, spatial, adaptive, transformer as their *_lite0 configs
    python benchmarks/decoders.py --types nic,soft,updown,transformer
    python benchmarks/decoders.py --quick    # 3 batches and 10 images of each, stand-in captions

Every decoder is built as its packaged config (`TYPE_lite0`: the dims the recipes train) for EfficientNet-Lite0
features (7x7x1280 grid and a 1280 global vector; the fine-tuned Lite2 features of the shipped model have the
same shapes). Features are random: speed does not depend on their values.
  training   the same length-bucketed batches of 64 Flickr8k train captions for every type (forward, backward,
             Adam step), extrapolated to a whole epoch; the types take turns, ROUNDS times, so that a busy
             machine slows all of them alike
  decoding   beam 5 over IMAGES images, 100 per call, every beam WORDS words long (<end> is banned, so that
             every type decodes the same number of steps; Flickr8k's captions average about 11 words)
"""

import argparse
import time
from pathlib import Path

import torch
from common import matmul_rate, peak_rss_mb
from epoch import DATA, train_captions

from captioner.config import load_config
from captioner.decoders import build_decoder
from captioner.decoding import beam_search
from captioner.training.data import CaptionBatches, ShuffledBatches


def build(kind: str, vocab: int, quick: bool):
    cfg = load_config(f"synth_{kind}" if quick else f"{kind}_lite0").model
    torch.manual_seed(0)
    return build_decoder(cfg, vocab, 1280, 1280).train()


def train_time(dec, opt, data, batches) -> float:
    """Seconds of a training step (forward, backward, Adam) per batch, over ``batches``."""
    dec.train()
    start = time.perf_counter()
    for idx in batches:
        opt.zero_grad()
        dec.loss(data[idx]["feats"], data[idx]["captions"])["loss"].backward()
        opt.step()
    return (time.perf_counter() - start) / len(batches)


@torch.no_grad()
def decode_time(dec, feats, beam_size: int, words: int) -> float:
    """Seconds per image of a batched beam search whose beams all run ``words`` steps."""
    dec.eval()
    n = len(feats["grid"])
    start = time.perf_counter()
    for i in range(0, n, 100):
        chunk = {k: v[i : i + 100].float() for k, v in feats.items()}
        hyps = beam_search(dec, chunk, 1, 2, beam_size=beam_size, max_len=words, banned=(2,))
        assert all(len(h.tokens) == words for h in hyps)
    return (time.perf_counter() - start) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--types", default="soft,spatial,adaptive,transformer")
    p.add_argument("--rounds", type=int, default=3, help="turns each type takes (default 3)")
    p.add_argument("--batches", type=int, default=15, help="training batches per turn (default 15)")
    p.add_argument("--images", type=int, default=200, help="images decoded per turn (default 200)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--words", type=int, default=12, help="length of every decoded caption (default 12)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.batches, args.images = 1, 3, 10
    kinds = args.types.split(",")
    caps, vocab, source = train_captions(args.data if not args.quick else Path("/nonexistent"))
    n = len(caps)
    feats = {"grid": torch.randn(2000, 49, 1280).half(), "global": torch.randn(2000, 1280).half()}
    data = CaptionBatches(feats, caps, torch.arange(n) % 2000)
    batches = list(ShuffledBatches(n, 64, seed=0, lengths=(caps != 0).sum(1)))
    rate = matmul_rate()

    decoders = {k: build(k, vocab, args.quick) for k in kinds}
    opts = {k: torch.optim.Adam(d.parameters(), lr=1e-3) for k, d in decoders.items()}
    for k, d in decoders.items():  # one batch each first: oneDNN's warm-up is not training time
        train_time(d, opts[k], data, batches[:1])
    train_s = {k: [] for k in kinds}
    for r in range(args.rounds):
        turn = batches[1 + r * args.batches : 1 + (r + 1) * args.batches]
        for k in kinds:
            train_s[k].append(train_time(decoders[k], opts[k], data, turn))
    test = {name: v[: args.images] for name, v in feats.items()}
    decode_s = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            decode_s[k].append(decode_time(decoders[k], test, args.beam_size, args.words))

    steps = len(batches)
    print(f"{source}: {n} captions in {steps} batches of 64, vocab {vocab}, 7x7x1280 features, "
          f"{torch.get_num_threads()} threads; {args.rounds} turns of {args.batches} batches and {args.images} images "
          f"(beam {args.beam_size}, {args.words} words)")
    base = kinds[0]
    print(f"{'type':12s} {'params':>8s} {'ms/batch':>9s} {'epoch min':>10s} {'x ' + base:>9s} "
          f"{'ms/image':>9s} {'x ' + base:>9s}")
    train_med = {k: sorted(v)[len(v) // 2] for k, v in train_s.items()}
    decode_med = {k: sorted(v)[len(v) // 2] for k, v in decode_s.items()}
    for k in kinds:
        params = sum(p.numel() for p in decoders[k].parameters()) / 1e6
        print(f"{k:12s} {params:7.1f}M {train_med[k] * 1000:9.0f} {train_med[k] * steps / 60:10.1f} "
              f"{train_med[k] / train_med[base]:9.2f} {decode_med[k] * 1000:9.1f} "
              f"{decode_med[k] / decode_med[base]:9.2f}")
    print(f"(medians over the turns; 'x {base}' is the time against {base}'s)")
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s; peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
