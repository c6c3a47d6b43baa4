"""Soft-attention training throughput: captioner vs the plain reference, side by side in one run.

    python benchmarks/train_step.py            # the issue's shapes: batch 32, 14x14x2048, vocab 2600, 20 words
    python benchmarks/train_step.py --quick    # smaller shapes, a few seconds

Prints captions/s for both, their ratio, and the fraction of this machine's fp32 matmul rate that our step
reaches (FLOPs counted from the shapes; backward counted as twice the forward).
"""

import argparse
import time

import torch
from common import matmul_rate, peak_rss_mb
from reference_soft import reference_loss

from captioner.config import ModelConfig
from captioner.decoders import build_decoder


def step_flops(b, t, locations, c, v, e, h, a) -> float:
    """Forward multiply-adds of our step x 2 FLOPs, x 3 for forward + backward."""
    per_word = e * 4 * h + (c + h) * 4 * h + h * a + locations * a + locations * c + h + h * e + c * e + e * v
    per_caption = t * per_word + locations * c * a + 2 * c * h  # encoder projection and h0/c0 once
    return 3 * 2 * b * per_caption


def time_steps(loss_fn, params, steps: int) -> float:
    opt = torch.optim.Adam(params, lr=1e-4)
    for i in range(steps + 1):
        if i == 1:  # first step warms up oneDNN
            start = time.perf_counter()
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and few steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    b, t, grid, c, v, dim = (32, 20, 14, 2048, 2600, 512) if not args.quick else (16, 12, 7, 512, 1000, 256)
    steps = args.steps or (5 if not args.quick else 3)
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(type="soft", embed_dim=dim, hidden_dim=dim, attention_dim=dim, dropout=0.5),
                        v, c, c).train()
    feats = torch.randn(b, grid * grid, c)
    caps = torch.randint(4, v, (b, t + 1))
    caps[:, 0], caps[:, -1] = 1, 2

    rate = matmul_rate()
    ours = time_steps(lambda: dec.loss({"grid": feats, "global": feats.mean(1)}, caps)["loss"], dec.parameters(), steps)
    ref = time_steps(lambda: reference_loss(dec, feats, caps), dec.parameters(), steps)
    flops = step_flops(b, t, grid * grid, c, v, dim, dim, dim)
    peak_mb = peak_rss_mb()
    print(f"shapes: batch {b}, {grid}x{grid}x{c} features, vocab {v}, {t} words, dims {dim}; "
          f"{args.threads} threads")
    print(f"reference: {b / ref:7.1f} captions/s   ({ref * 1000:.0f} ms/step)")
    print(f"captioner: {b / ours:7.1f} captions/s   ({ours * 1000:.0f} ms/step)")
    print(f"speed-up: {ref / ours:.2f}x")
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s; our step {flops / ours / 1e9:.1f} GFLOP/s "
          f"= {flops / ours / rate:.0%} of it; peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
