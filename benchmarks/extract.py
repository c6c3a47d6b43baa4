"""Feature extraction from JPEG files vs the encoder's raw forward pass on in-memory tensors, in one run.

    python benchmarks/extract.py            # 320 Flickr8k photos (../shared/data/flickr8k), EfficientNet-Lite0
    python benchmarks/extract.py --quick    # 32 generated 500x375 JPEGs
    python benchmarks/extract.py --data DIR --encoder mobilenet_v2 --images 200

raw    the encoder on already decoded, resized and normalised tensors (batches of 32): the ceiling
files  ``captioner.features.extract_features`` on the same files: JPEG decoding, resizing, the same
       forward passes and writing the cache, with 0 and 1 DataLoader workers
Target: files >= 0.8x raw, i.e. reading images must not be the bottleneck.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import count_flops, matmul_rate, peak_rss_mb
from PIL import Image

from captioner.data.images import load_image
from captioner.data.records import ImageRecord
from captioner.encoders import create_encoder
from captioner.features import _encode, extract_features

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


def jpeg_files(data: Path | None, n: int, tmp: Path) -> list[Path]:
    """``n`` JPEGs from ``data`` (sorted by name), else ``n`` generated 500x375 photos-like JPEGs."""
    if data is not None:
        files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
        if len(files) < n:
            raise SystemExit(f"{data}: only {len(files)} JPEG files, {n} asked for")
        return files
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):  # smooth random colour fields: JPEG-compress like photos, unlike pure noise
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        path = tmp / f"gen_{i:04d}.jpg"
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)
        files.append(path)
    return files


def time_raw(encoder, tensors: torch.Tensor, batch: int) -> float:
    _encode(encoder, tensors[:batch], torch.device("cpu"))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        _encode(encoder, tensors[i : i + batch], torch.device("cpu"))
    return time.perf_counter() - start


def time_files(encoder, files: list[Path], out: Path, batch: int, workers: int) -> float:
    records = [ImageRecord(image=f, split="train") for f in files]
    start = time.perf_counter()
    cache = extract_features(records, encoder, out, batch_size=batch, num_workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    assert len(cache.failed) == 0 and len(cache) == len(files), cache.failed
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 generated JPEGs")
    p.add_argument("--data", type=Path, help="a folder of JPEGs (default: Flickr8k if present, else generated)")
    p.add_argument("--images", type=int)
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    n = args.images or (32 if args.quick else 320)
    data = args.data or (FLICKR8K if FLICKR8K.is_dir() and not args.quick else None)
    encoder = create_encoder(args.encoder, weights="none").eval()  # weights do not change the speed
    b = args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = jpeg_files(data, n, tmp)
        tensors = torch.stack([encoder.preprocess(load_image(f)) for f in files])  # [n, 3, S, S], untimed
        rate = matmul_rate()
        flops = count_flops(lambda: _encode(encoder, tensors[:b], torch.device("cpu"))) * n / b
        t_raw = time_raw(encoder, tensors, b)
        t_files = {w: time_files(encoder, files, tmp / f"cache{w}", b, w) for w in (0, 1)}
        t_raw2 = time_raw(encoder, tensors, b)  # again, to see how much the machine drifted

    source = str(data) if data else "generated 500x375 JPEGs"
    print(f"{args.encoder} at {encoder.input_size}px, {n} images from {source}, batch {b}, "
          f"{torch.get_num_threads()} threads")
    raw = min(t_raw, t_raw2)
    print(f"raw forward:          {n / t_raw:6.1f} img/s (again at the end: {n / t_raw2:.1f})")
    for w, t in t_files.items():
        print(f"files, {w} workers:     {n / t:6.1f} img/s  = {raw / t:.2f}x raw")
    print(f"matmul rate {rate / 1e9:.1f} GFLOP/s; raw forward {flops / raw / 1e9:.1f} GFLOP/s "
          f"= {flops / raw / rate:.0%} of it; peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
