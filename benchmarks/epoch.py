"""Time of one Flickr8k training epoch (all train captions), captioner vs the tutorial recipe, in one run.

    python benchmarks/epoch.py            # 40 batches of each, extrapolated to the whole epoch
    python benchmarks/epoch.py --quick    # 3 batches of each, stand-in captions

Shapes are Flickr8k's with EfficientNet-Lite0 features: 7x7x1280 grid, the real train captions (tokenised,
vocabulary min_word_freq 5) when ../shared/data/flickr8k is there, dims 512, the paper's
architecture (deep output, gating scalar, doubly stochastic regularisation). Features are random: speed does
not depend on their values. captioner batches 64 captions of similar length together (Xu et al. used
same-length minibatches of 64); the tutorial recipe draws random batches of 32 and runs its loop to the
longest caption of each batch.
"""

import argparse
import time
from pathlib import Path

import torch
from common import count_flops, matmul_rate, peak_rss_mb
from reference_soft import reference_loss

from captioner.config import ModelConfig
from captioner.decoders import build_decoder
from captioner.training.data import CaptionBatches, ShuffledBatches

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flickr8k"


def train_captions(data: Path, max_len: int = 50) -> tuple[torch.Tensor, int, str]:
    """Padded train captions [N, T] and vocabulary size: Flickr8k's, or a stand-in of the same size."""
    if data.exists():
        from captioner.data.readers import load_dataset
        from captioner.data.vocab import Vocab
        from captioner.training.data import encode_captions

        records = load_dataset(data).split("train")
        vocab = Vocab.build((c for r in records for c in r.captions), min_freq=5)
        caps, _ = encode_captions(records, list(range(len(records))), vocab, max_len)
        return caps, len(vocab), f"Flickr8k train ({data})"
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.randn(30000, generator=gen) * 4 + 12).clamp(4, 35).long()
    caps = torch.zeros(30000, 38, dtype=torch.long)
    for i, n in enumerate(lengths):
        caps[i, 0], caps[i, 1 : n + 1], caps[i, n + 1] = 1, torch.randint(4, 2550, (int(n),), generator=gen), 2
    return caps, 2550, "stand-in lengths (Flickr8k not found)"


def time_batches(loss_fn, dec, batches, caps, feats) -> float:
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    total = 0.0
    for i, idx in enumerate(batches):
        start = time.perf_counter()
        opt.zero_grad()
        loss_fn(idx).backward()
        opt.step()
        if i > 0:  # the first batch warms up oneDNN
            total += time.perf_counter() - start
    return total / (len(batches) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--batch-size", type=int, default=64,
                   help="captioner's batch (the configs use 64 as Xu et al.; the tutorial recipe keeps 32)")
    args = p.parse_args()
    n_batches = 3 if args.quick else 40
    caps, vocab, source = train_captions(args.data if not args.quick else Path("/nonexistent"))
    n = len(caps)
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(type="soft"), vocab, 1280, 1280).train()
    feats = {"grid": torch.randn(2000, 49, 1280).half(), "global": torch.zeros(2000, 1280).half()}
    rows = torch.arange(n) % 2000
    data = CaptionBatches(feats, caps, rows)
    lengths = (caps != 0).sum(1)

    bs = args.batch_size
    ours_batches = list(ShuffledBatches(n, bs, seed=0, lengths=lengths))[: max(2, n_batches * 32 // bs)]
    tutorial_batches = list(ShuffledBatches(n, 32, seed=0))[:n_batches]
    rate = matmul_rate()
    sample = ours_batches[1:4]  # FLOPs of forward + backward, counted by torch from the shapes
    flops = sum(count_flops(lambda i=i: dec.loss(data[i]["feats"], data[i]["captions"])["loss"].backward())
                for i in sample) / len(sample)
    t_ours = time_batches(lambda idx: dec.loss(data[idx]["feats"], data[idx]["captions"])["loss"],
                          dec, ours_batches, caps, feats)
    t_ref = time_batches(lambda idx: reference_loss(dec, data[idx]["feats"]["grid"], data[idx]["captions"]),
                         dec, tutorial_batches, caps, feats)
    steps = (n + 31) // 32
    ours_steps = (n + bs - 1) // bs
    print(f"{source}: {n} captions, vocab {vocab}, 7x7x1280, dims 512, "
          f"{torch.get_num_threads()} threads")
    print(f"tutorial recipe: {t_ref * 1000:6.0f} ms/batch -> epoch {t_ref * steps / 60:5.1f} min "
          f"({32 / t_ref:.0f} captions/s)")
    t_epoch_ours, t_epoch_ref = t_ours * ours_steps, t_ref * steps
    print(f"captioner:       {t_ours * 1000:6.0f} ms/batch of {bs} -> epoch {t_epoch_ours / 60:5.1f} min "
          f"({bs / t_ours:.0f} captions/s); {t_epoch_ref / t_epoch_ours:.2f}x faster")
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s; captioner's step {flops / t_ours / 1e9:.1f} GFLOP/s "
          f"= {flops / t_ours / rate:.0%} of it; peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
