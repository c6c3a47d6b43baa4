"""Batched beam search vs one image at a time, side by side in one run.

    python benchmarks/beam.py            # 1000 images, 7x7x1280 features, vocab 2600, beam 5, dims 512
    python benchmarks/beam.py --quick    # 20 images, small dims

Three ways to decode the same images with the same soft-attention weights:
  batched    captioner's beam search, 100 images x 5 beams per call
  per-image  captioner's beam search called with one image at a time (must give identical captions)
  reference  a tutorial-style per-image beam search (benchmarks/reference_soft.py), for scale
The decoder is trained for a few hundred steps on random captions so that beams end at varied lengths.
"""

import argparse
import time

import torch
from common import count_flops, matmul_rate, peak_rss_mb
from reference_soft import reference_beam_search

from captioner.config import ModelConfig
from captioner.decoders import build_decoder
from captioner.decoding import beam_search


def make_decoder(vocab: int, channels: int, dim: int, steps: int):
    """A soft-attention decoder briefly fitted to random 8-14 word captions (so <end> gets emitted)."""
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(type="soft", embed_dim=dim, hidden_dim=dim, attention_dim=dim, dropout=0.0),
                        vocab, channels, channels)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    for _ in range(steps):
        lengths = torch.randint(8, 15, (32,))
        caps = torch.randint(4, 60, (32, 17))  # a small working vocabulary
        caps[:, 0] = 1
        for i, n in enumerate(lengths):
            caps[i, n + 1] = 2
            caps[i, n + 2 :] = 0
        feats = torch.randn(32, 49, channels)
        opt.zero_grad()
        dec.loss({"grid": feats, "global": feats.mean(1)}, caps)["loss"].backward()
        opt.step()
    return dec.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--beam-size", type=int, default=5)
    args = p.parse_args()
    n = args.images or (20 if args.quick else 1000)
    vocab, channels, dim = (2600, 1280, 512) if not args.quick else (1000, 256, 128)
    dec = make_decoder(vocab, channels, dim, steps=30 if args.quick else 150)
    grid = torch.randn(n, 49, channels)
    feats = {"grid": grid, "global": grid.mean(1)}
    k = args.beam_size
    rate = matmul_rate()
    chunks = [{name: v[i : i + 100] for name, v in feats.items()} for i in range(0, n, 100)]
    flops = sum(count_flops(lambda c=c: beam_search(dec, c, 1, 2, beam_size=k)) for c in chunks)

    start = time.perf_counter()
    batched = []
    for chunk in chunks:
        batched += beam_search(dec, chunk, 1, 2, beam_size=k)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    single = [beam_search(dec, {name: v[i : i + 1] for name, v in feats.items()}, 1, 2, beam_size=k)[0]
              for i in range(n)]
    t_single = time.perf_counter() - start

    m = min(n, 100)  # the tutorial-style reference is slow: time it on 100 images and scale
    start = time.perf_counter()
    ref_captions = reference_beam_search(dec, grid[:m], 1, 2, beam_size=k)
    t_ref = (time.perf_counter() - start) * n / m

    same = sum(a.tokens == b.tokens for a, b in zip(batched, single, strict=True))
    lengths = [len(h.tokens) for h in batched]
    print(f"{n} images, 7x7x{channels} features, vocab {vocab}, dims {dim}, beam {k}, "
          f"{torch.get_num_threads()} threads; mean caption length {sum(lengths) / n:.1f}")
    print(f"batched:   {t_batched:7.1f} s  ({t_batched / n * 1000:.1f} ms/image)")
    print(f"per-image: {t_single:7.1f} s  ({t_single / n * 1000:.1f} ms/image)  -> batched is {t_single / t_batched:.1f}x faster")
    print(f"reference: {t_ref:7.1f} s  ({t_ref / n * 1000:.1f} ms/image, timed on {m})  -> batched is "
          f"{t_ref / t_batched:.1f}x faster")
    same_ref = sum(a.tokens == b for a, b in zip(batched[:m], ref_captions, strict=True))
    print(f"identical captions batched vs per-image: {same}/{n}; vs the reference: {same_ref}/{m}; "
          f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s; batched search {flops / t_batched / 1e9:.1f} GFLOP/s "
          f"= {flops / t_batched / rate:.0%} of it (matrix products counted by torch from their shapes)")


if __name__ == "__main__":
    main()
