"""What a run of each of the paper's configurations costs: feature extraction, cache size, training speed and
memory, measured on a subset of real images and extrapolated to Flickr8k and COCO.

    python benchmarks/seed_configs.py --data ../shared/data/flickr8k --images 1000
    python benchmarks/seed_configs.py --quick          # two configs on generated shapes (CI)

Each config (nic_resnet101, soft_vgg19, soft_resnet101, hard_vgg19, hard_resnet101) runs as `captioner features`
then `captioner train` (one epoch, 20 val images) in fresh processes, with ``encoder.weights=none``: random
weights measure the code path and its costs, not scores (the ImageNet weights are a download). The subset's
first 80 % of images are its training split, the rest val. Reported per config: extraction images/s, cache
size, training captions/s (the epoch's captions over its wall time, its small validation included), epoch
time extrapolated to Flickr8k (30,000 training captions) and COCO (Karpathy train + restval, 566,747 captions),
and the peak RSS of each step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import matmul_rate

CONFIGS = ["nic_resnet101", "soft_vgg19", "soft_resnet101", "hard_vgg19", "hard_resnet101"]
FLICKR8K_IMAGES, FLICKR8K_CAPTIONS = 8091, 30_000
COCO_IMAGES, COCO_CAPTIONS = 123_287, 566_747


def subset(data: Path, n: int, out: Path) -> Path:
    """The first ``n`` images of ``data`` (reference layout: captions.txt, images/, splits/) as a dataset of
    their own in ``out``: links to the images, 80 % train, 20 % val."""
    names = [line.split()[0] for line in (data / "splits" / "train.txt").read_text().splitlines()][:n]
    (out / "images").mkdir(parents=True)
    (out / "splits").mkdir()
    for name in names:
        (out / "images" / name).symlink_to((data / "images" / name).resolve())
    keep = set(names)
    lines = [line for line in (data / "captions.txt").read_text().splitlines() if line.split("\t")[0] in keep]
    (out / "captions.txt").write_text("\n".join(lines) + "\n")
    cut = int(0.8 * len(names))
    (out / "splits" / "train.txt").write_text("\n".join(names[:cut]) + "\n")
    (out / "splits" / "val.txt").write_text("\n".join(names[cut:]) + "\n")
    return out


PEAK = ("import resource, sys\nfrom captioner.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    print('peak-kb', max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, "
        "resource.RUSAGE_CHILDREN)), file=sys.stderr)")


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one `captioner ARGS` run in a fresh process."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", PEAK, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"captioner {' '.join(args[:3])}: failed\n{run.stderr[-3000:]}")
    peak_kb = int(run.stderr.rsplit("peak-kb", 1)[1].split()[0])
    return seconds, peak_kb / 1024**2


def measure(config: str, data: Path, work: Path, sets: list[str], env: dict) -> dict:
    overrides = [a for s in ["encoder.weights=none", *sets] for a in ("--set", s)]
    features = Path(env["CAPTIONER_CACHE"]) / "features"
    before = set(features.iterdir()) if features.is_dir() else set()
    extract_s, extract_gb = timed(["features", "--config", config, "--data", str(data), "--no-progress",
                                   *overrides], env)
    caches = sorted((Path(env["CAPTIONER_CACHE"]) / "features").iterdir(), key=lambda p: p.stat().st_mtime)
    cache_bytes = sum(f.stat().st_size for f in caches[-1].glob("*.npy"))
    n_images = len(json.loads((caches[-1] / "meta.json").read_text())["names"])
    run = work / config
    train_s, train_gb = timed(["train", "--config", config, "--data", str(data), "--out", str(run),
                               "--no-progress", *overrides, "--set", "train.max_epochs=1",
                               "--set", "train.val_images=20"], env)
    captions = sum(1 for line in (data / "captions.txt").read_text().splitlines()
                   if line.split("\t")[0] in set((data / "splits" / "train.txt").read_text().split()))
    epoch_s = _epoch_seconds(run) or train_s
    reused = not (set(features.iterdir()) - before)  # another config's encoder made this cache already
    return {"config": config, "images": n_images, "extract_img_s": None if reused else n_images / extract_s,
            "extract_s": extract_s, "cache_mb_per_1k": cache_bytes / n_images * 1000 / 1e6,
            "captions_s": captions / epoch_s, "extract_peak_gb": extract_gb, "train_peak_gb": train_gb}


def _epoch_seconds(run: Path) -> float | None:
    """The epoch's wall time as the run logged it (time/epoch_s), if it did."""
    for path in (run / "logs").glob("**/metrics.csv"):
        head, *rows = path.read_text().splitlines()
        column = head.split(",").index("time/epoch_s") if "time/epoch_s" in head else None
        values = [r.split(",")[column] for r in rows if column is not None and r.split(",")[column]]
        if values:
            return float(values[-1])
    return None


def table(results: list[dict]) -> str:
    lines = ["| config | extraction (images/s) | cache per 1,000 images | training (captions/s) | Flickr8k: "
             "extraction / epoch | COCO: extraction / epoch | peak RSS extraction / training |",
             "|---|---|---|---|---|---|---|"]
    rate_of = {}  # an encoder's extraction speed, from the config that extracted its cache first
    for r in results:
        encoder = r["config"].split("_", 1)[1]
        rate_of.setdefault(encoder, r["extract_img_s"])
        rate = r["extract_img_s"] or rate_of[encoder]
        shown = f"{rate:.1f}" if r["extract_img_s"] else f"{rate:.1f} (its encoder's cache reused)"
        lines.append(
            f"| `{r['config']}` | {shown} | {r['cache_mb_per_1k']:.0f} MB | {r['captions_s']:.0f} | "
            f"{_hm(FLICKR8K_IMAGES / rate)} / {_hm(FLICKR8K_CAPTIONS / r['captions_s'])} | "
            f"{_hm(COCO_IMAGES / rate)} / {_hm(COCO_CAPTIONS / r['captions_s'])} | "
            f"{r['extract_peak_gb']:.1f} / {r['train_peak_gb']:.1f} GB |")
    return "\n".join(lines)


def _hm(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a dataset in the reference layout (captions.txt, images/, splits/)")
    p.add_argument("--images", type=int, default=1000, help="how many of its training images to use")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--quick", action="store_true", help="two configs, small images, generated data")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "CAPTIONER_CACHE": str(work / "cache")}
        sets, configs = [], args.configs.split(",")
        if args.quick:  # generated shapes, 64 px: the code path only
            from captioner.data.synth import make_synth

            data = make_synth(work / "synth", n_train=24, n_val=6, n_test=2, size=64)
            sets, configs = ["encoder.input_size=64", "encoder.grid_size=2", "train.batch_size=8"], ["nic_resnet101", "soft_vgg19"]
        elif args.data is None:
            p.error("--data is needed (or --quick)")
        else:
            data = subset(args.data, args.images, work / "subset")
        rate = matmul_rate()
        results = [measure(config, data, work, sets, env) for config in configs]
    print(table(results))
    print(f"{results[0]['images']} images, encoder.weights=none; matmul rate at the start {rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
