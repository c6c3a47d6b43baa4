"""Time of one Flickr8k training epoch (all train captions), captioner vs the tutorial recipe, in one run.

    python benchmarks/epoch.py            # 40 batches of each, extrapolated to the whole epoch
    python benchmarks/epoch.py --quick    # 8 batches of each

Shapes are Flickr8k's with EfficientNet-Lite0 features: 7x7x1280 grid, the real train captions (tokenised,
vocabulary min_word_freq 5) when ../shared/data/flickr8k is there, batch 32, dims 512, the paper's
architecture (deep output, gating scalar, doubly stochastic regularisation). Features are random: speed does
not depend on their values. captioner batches captions of similar length together; the tutorial recipe
draws random batches and runs its loop to the longest caption of each batch.
"""

import argparse
import time
from pathlib import Path

import torch
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
    args = p.parse_args()
    n_batches = 8 if args.quick else 40
    caps, vocab, source = train_captions(args.data)
    n = len(caps)
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(type="soft"), vocab, 1280, 1280).train()
    feats = {"grid": torch.randn(2000, 49, 1280).half(), "global": torch.zeros(2000, 1280).half()}
    rows = torch.arange(n) % 2000
    data = CaptionBatches(feats, caps, rows)
    lengths = (caps != 0).sum(1)

    ours_batches = list(ShuffledBatches(n, 32, seed=0, lengths=lengths))[:n_batches]
    tutorial_batches = list(ShuffledBatches(n, 32, seed=0))[:n_batches]
    t_ours = time_batches(lambda idx: dec.loss(data[idx]["feats"], data[idx]["captions"])["loss"],
                          dec, ours_batches, caps, feats)
    t_ref = time_batches(lambda idx: reference_loss(dec, data[idx]["feats"]["grid"], data[idx]["captions"]),
                         dec, tutorial_batches, caps, feats)
    steps = (n + 31) // 32
    print(f"{source}: {n} captions, vocab {vocab}, 7x7x1280, batch 32, dims 512, "
          f"{torch.get_num_threads()} threads; {n_batches - 1} timed batches each")
    print(f"tutorial recipe: {t_ref * 1000:6.0f} ms/batch -> epoch {t_ref * steps / 60:5.1f} min "
          f"({32 / t_ref:.0f} captions/s)")
    print(f"captioner:       {t_ours * 1000:6.0f} ms/batch -> epoch {t_ours * steps / 60:5.1f} min "
          f"({32 / t_ours:.0f} captions/s); {t_ref / t_ours:.2f}x faster")


if __name__ == "__main__":
    main()
